"""Every format, whole and streamed, read back by standard decoders (libsndfile through
soundfile, FFmpeg through PyAV) at the right length: exactly, or with the codec's documented
priming and padding; and the speed change through FFmpeg's atempo."""

from __future__ import annotations

import io
import math

import av
import numpy as np
import pytest
import soundfile as sf

from shared.audio.codecs import AAC_FRAME, AAC_PRIMING, MP3_DELAY, MP3_GRANULE
from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE, to_pcm16
from shared.audio.formats import AUDIO_FORMATS, StreamEncoder, encode_file, transcode
from shared.audio.tempo import TempoStretch, stretch
from shared.errors import InvalidInput
from tests.sounds import chirp

LENGTHS = [1, 2, 7, 38]  # in 80 ms frames


def samples(frames: int) -> np.ndarray:
    return to_pcm16(chirp(frames * FRAME_SAMPLES / SAMPLE_RATE))


def with_av(data: bytes) -> tuple[int, int]:
    """(samples, rate) as FFmpeg decodes them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(f.samples for f in container.decode(stream)), int(stream.rate)


def with_soundfile(data: bytes) -> tuple[int, int]:
    y, rate = sf.read(io.BytesIO(data), dtype="int16")
    return len(y), int(rate)


def streamed(pcm: np.ndarray, fmt: str, chunk: int = FRAME_SAMPLES) -> tuple[bytes, list[int]]:
    """The stream of ``pcm`` fed chunk by chunk, and the bytes out after each chunk."""
    encoder = StreamEncoder(fmt)
    parts = [encoder.feed(pcm[i : i + chunk].tobytes()) for i in range(0, len(pcm), chunk)]
    return b"".join(parts) + encoder.finish(), [len(p) for p in parts]


@pytest.mark.parametrize("frames", LENGTHS)
def test_whole_files_decode_to_their_length(frames: int) -> None:
    pcm = samples(frames)
    n = len(pcm)
    for fmt in ("wav", "flac", "mp3", "opus"):  # the LAME tag makes an mp3 exact
        assert with_soundfile(encode_file(pcm, fmt)) == (n, SAMPLE_RATE), fmt
    assert with_av(encode_file(pcm, "mp3")) == (n, SAMPLE_RATE)
    assert with_av(encode_file(pcm, "opus")) == (2 * n, 48_000)  # FFmpeg decodes Opus at 48 kHz
    aac = math.ceil((n + AAC_PRIMING) / AAC_FRAME) * AAC_FRAME
    assert with_av(encode_file(pcm, "aac")) == (aac, SAMPLE_RATE)
    assert encode_file(pcm, "pcm") == pcm.astype("<i2").tobytes()
    for fmt in ("wav", "flac"):  # lossless: the samples themselves
        back, _ = sf.read(io.BytesIO(encode_file(pcm, fmt)), dtype="int16")
        assert np.array_equal(back, pcm)


@pytest.mark.parametrize("frames", LENGTHS)
def test_streams_decode_to_their_length(frames: int) -> None:
    pcm = samples(frames)
    n = len(pcm)
    assert streamed(pcm, "pcm")[0] == pcm.tobytes()
    wav = streamed(pcm, "wav")[0]
    assert wav[4:8] == b"\xff\xff\xff\xff" and wav[44:] == pcm.tobytes()
    assert with_soundfile(wav) == (n, SAMPLE_RATE)
    assert with_av(streamed(pcm, "flac")[0]) == (n, SAMPLE_RATE)  # no total length: FFmpeg
    assert with_soundfile(streamed(pcm, "opus")[0]) == (n, SAMPLE_RATE)
    mp3 = math.ceil((n + MP3_DELAY) / MP3_GRANULE) * MP3_GRANULE  # no gapless tag when streamed
    assert with_soundfile(streamed(pcm, "mp3")[0]) == (mp3, SAMPLE_RATE)
    aac = math.ceil((n + AAC_PRIMING) / AAC_FRAME) * AAC_FRAME
    assert with_av(streamed(pcm, "aac")[0]) == (aac, SAMPLE_RATE)


def test_streams_flow_while_fed() -> None:
    pcm = samples(20)
    for fmt in AUDIO_FORMATS:
        _, sizes = streamed(pcm, fmt, chunk=4 * FRAME_SAMPLES)  # the worker's default chunks
        # Every chunk after the first two brings bytes out: nothing waits for the end.
        assert all(size > 0 for size in sizes[2:]), (fmt, sizes)


def test_transcode_keeps_flac_and_serves_the_rest() -> None:
    pcm = samples(5)
    flac = encode_file(pcm, "flac")
    assert transcode(flac, "flac") is flac
    assert transcode(flac, "pcm") == pcm.tobytes()
    with pytest.raises(InvalidInput, match="unknown audio format 'ogg'"):
        transcode(flac, "ogg")


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.25, 2.0, 4.0])
def test_speed_changes_the_length(speed: float) -> None:
    pcm = samples(25)
    out = stretch(pcm, speed)
    assert out.dtype == np.int16
    assert abs(len(out) - len(pcm) / speed) <= 3200
    # Fed chunk by chunk it makes the same samples.
    tempo = TempoStretch(speed)
    parts = [tempo.feed(pcm[i : i + FRAME_SAMPLES]) for i in range(0, len(pcm), FRAME_SAMPLES)]
    assert np.array_equal(np.concatenate([*parts, tempo.finish()]), out)


def test_speed_one_is_untouched_and_the_range_is_enforced() -> None:
    pcm = samples(3)
    assert stretch(pcm, 1.0) is pcm
    for speed in (0.2, 4.5):
        with pytest.raises(ValueError, match="speed"):
            TempoStretch(speed)
