"""``decode_upload`` fuzzed with hypothesis: arbitrary bytes and mutated real files (WAV, FLAC,
OGG, MP3, AIFF) decode to sane 24 kHz mono audio or are refused with a 4xx naming the problem.
Through HTTP: tests/api/test_upload_fuzz.py."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.audio.containers import SAMPLE_RATE, decode_upload
from shared.errors import ParleyError
from tests.audio_fuzz import FUZZ, MAX_DURATION_MS, SEED_KINDS, SEED_SECONDS, mutated_audio
from tests.sounds import audio_file, chirp


def assert_decoded_or_refused(data: bytes) -> None:
    """Sane audio, or a caller's-mistake error: any other exception fails the test."""
    try:
        audio = decode_upload(data, max_duration_ms=MAX_DURATION_MS)
    except ParleyError as exc:
        event(exc.code)
        assert 400 <= exc.status_code < 500, exc
        assert exc.code and exc.message
        return
    event("decoded")
    assert audio.dtype == np.float32 and audio.ndim == 1
    # resampling may add a few samples past the limit, never more
    assert 0 < audio.size <= MAX_DURATION_MS * SAMPLE_RATE // 1000 + 64
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() <= 1.0


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=4096))
def test_decode_upload_on_arbitrary_bytes(data: bytes) -> None:
    assert_decoded_or_refused(data)


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(st.binary(max_size=64).map(lambda b: b"RIFF" + b), mutated_audio()))
def test_decode_upload_on_mutated_audio_files(data: bytes) -> None:
    assert_decoded_or_refused(data)


@pytest.mark.parametrize(("fmt", "subtype", "rate", "channels"), SEED_KINDS)
def test_seed_files_decode_whole(fmt: str, subtype: str, rate: int, channels: int) -> None:
    """The files the mutations start from are themselves read, at the right length."""
    data = audio_file(chirp(SEED_SECONDS, rate, channels=channels), rate, fmt, subtype)
    audio = decode_upload(data, max_duration_ms=MAX_DURATION_MS)
    # MP3 and Opus pad their start and IMA ADPCM its last block; the rest are exact to a sample
    slack = {"MP3": 2000, "OGG": 2000}.get(fmt, 1600 if subtype == "IMA_ADPCM" else 2)
    assert abs(audio.size - SEED_SECONDS * SAMPLE_RATE) <= slack


@pytest.mark.parametrize("rate", [500, 400_000, 2**31 - 1])
def test_sample_rates_outside_what_parley_reads_are_refused(rate: int) -> None:
    """A header's 2**31 Hz took seconds of CPU to resample into a handful of samples."""
    data = bytearray(audio_file(chirp(0.5, 24_000), 24_000, "WAV", "PCM_16"))
    assert data[24:28] == (24_000).to_bytes(4, "little")  # the fmt chunk's sample rate
    data[24:28] = rate.to_bytes(4, "little")
    with pytest.raises(ParleyError) as err:
        decode_upload(bytes(data), max_duration_ms=600_000)
    assert err.value.status_code == 422 and err.value.code == "unsupported_sample_rate"


@pytest.mark.parametrize(
    "samples",
    [[[np.inf, 0.5]], [[-np.inf, np.inf]], [[np.nan, 0.0]], [[3e38, 3e38]], [[-3e38, 3e38]]],
)
def test_float_samples_out_of_range(samples: list[list[float]]) -> None:
    """Non-finite samples are refused, huge finite ones clipped; numpy used to warn on the
    channel mix first (inf - inf, or 3e38 + 3e38 overflowing float32)."""
    frames = np.array(samples * 2400, dtype=np.float32)
    data = audio_file(frames, 24_000, "WAV", "FLOAT")
    if np.all(np.isfinite(frames)):
        audio = decode_upload(data, max_duration_ms=MAX_DURATION_MS)
        assert audio.size == 2400 and np.all(np.abs(audio) <= 1.0)
        return
    with pytest.raises(ParleyError) as err:
        decode_upload(data, max_duration_ms=MAX_DURATION_MS)
    assert err.value.code == "invalid_audio" and "non-finite" in err.value.message


def test_a_seek_before_the_start_fails_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AIFF whose SSND chunk is overwritten makes libsndfile seek to -1: BytesIO raised inside
    soundfile's C callback, where the error was lost ("Exception ignored", the seek read as 0)."""
    lost: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lost.append)
    data = bytearray(audio_file(chirp(0.3, 32_000), 32_000, "AIFF", "PCM_24"))
    assert data[38:42] == b"SSND"
    data[36:40] = (0x7FFFFFFF).to_bytes(4, "big")
    with pytest.raises(ParleyError) as err:
        decode_upload(bytes(data), max_duration_ms=MAX_DURATION_MS)
    assert err.value.code == "invalid_audio"
    assert lost == []
