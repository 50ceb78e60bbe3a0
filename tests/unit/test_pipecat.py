"""The Pipecat extra's pure parts: the caller's PCM as a WAV file, and which of the caller's
audio makes a user turn (a little from before its start, up to the end of its last speech)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from parley.pipecat import CallerAudio, wav_bytes


def pcm(values: list[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


@pytest.mark.parametrize(("rate", "channels"), [(16_000, 1), (8_000, 2), (48_000, 1)])
def test_wav_bytes_carries_the_samples_rate_and_channels(rate: int, channels: int) -> None:
    samples = np.random.default_rng(rate).integers(-32768, 32767, (rate // 10, channels))
    data = wav_bytes(pcm(samples.reshape(-1)), rate, channels)
    got, got_rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert got_rate == rate and got.shape == samples.shape
    assert np.array_equal(got, samples)


def test_wav_bytes_refuses_a_partial_frame() -> None:
    with pytest.raises(ValueError, match="whole"):
        wav_bytes(b"\x00\x01\x02", 16_000)
    with pytest.raises(ValueError, match="whole 2-channel"):
        wav_bytes(pcm([1, 2, 3]), 16_000, 2)
    with pytest.raises(ValueError, match="format"):
        wav_bytes(pcm([1]), 0)


def test_a_turn_is_the_pre_roll_then_the_audio_up_to_the_end_of_its_speech() -> None:
    audio = CallerAudio(pre_roll_s=0.002)  # 2 ms at 1 kHz: the last 2 samples
    audio.add(pcm([1, 2, 3]), 1000, 1)
    audio.add(pcm([4]), 1000, 1)
    assert not audio.capturing
    audio.start()
    audio.add(pcm([5, 6]), 1000, 1)
    audio.speech_stopped()
    audio.add(pcm([0, 0]), 1000, 1)  # the pause after the speech is left out
    assert audio.finish() == pcm([3, 4, 5, 6])
    assert not audio.capturing


def test_speech_again_within_the_turn_keeps_the_pause_before_it() -> None:
    audio = CallerAudio(pre_roll_s=0)
    audio.start()
    audio.add(pcm([1]), 1000, 1)
    audio.speech_stopped()
    audio.add(pcm([0]), 1000, 1)
    audio.speech_started()
    audio.add(pcm([2]), 1000, 1)
    assert audio.finish() == pcm([1, 0, 2])  # no speech end marked: all of it
    audio.add(pcm([7]), 1000, 1)
    audio.start()
    assert audio.finish() == b""  # the next turn starts afresh (no pre-roll asked for)


def test_a_format_change_between_turns_starts_over_and_within_one_is_dropped() -> None:
    audio = CallerAudio(pre_roll_s=1)
    audio.add(pcm([1, 2]), 1000, 1)
    audio.add(pcm([3, 4]), 2000, 2)  # a new format between turns: the old audio goes
    audio.start()
    audio.add(pcm([5, 6]), 2000, 2)
    audio.add(pcm([9]), 1000, 1)  # another format mid-turn: dropped
    assert (audio.sample_rate, audio.num_channels) == (2000, 2)
    assert audio.finish() == pcm([3, 4, 5, 6])


def test_the_pre_roll_keeps_whole_frames_of_every_channel() -> None:
    audio = CallerAudio(pre_roll_s=0.001)  # one frame at 1 kHz: two samples in stereo
    audio.add(pcm([1, 2, 3, 4, 5, 6]), 1000, 2)
    audio.start()
    assert audio.finish() == pcm([5, 6])


def test_a_turn_that_never_ends_keeps_only_its_last_max_turn_s() -> None:
    audio = CallerAudio(pre_roll_s=0, max_turn_s=0.003)  # 3 samples at 1 kHz
    audio.start()
    audio.add(pcm([1, 2]), 1000, 1)
    audio.speech_stopped()  # after sample 2
    audio.add(pcm([0, 0]), 1000, 1)  # sample 1 goes; the speech end moves with it
    assert audio.finish() == pcm([2])
