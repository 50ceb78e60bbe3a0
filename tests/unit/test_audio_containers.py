"""Uploads in any common container and rate become 24 kHz mono; anything else is refused."""

from __future__ import annotations

import numpy as np
import pytest

from shared.audio import containers as audio
from shared.errors import InvalidInput
from tests.sounds import audio_file, chirp, read


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_16", 44_100, 2),
        ("WAV", "FLOAT", 24_000, 1),
        ("FLAC", "PCM_24", 16_000, 1),
        ("OGG", "VORBIS", 48_000, 2),
        ("OGG", "OPUS", 48_000, 1),
        ("MP3", "MPEG_LAYER_III", 22_050, 1),
        ("AIFF", "PCM_16", 8_000, 1),
    ],
)
def test_decode_upload_normalises(fmt: str, subtype: str, rate: int, channels: int) -> None:
    data = audio_file(chirp(1.0, rate, channels=channels), rate, fmt, subtype)
    samples = audio.decode_upload(data, max_duration_ms=10_000)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # 1 s of audio at 24 kHz, give or take codec padding (mp3/opus add a little).
    assert abs(len(samples) - 24_000) < 0.1 * 24_000
    assert 0.05 < float(np.sqrt(np.mean(samples**2))) < 0.6


@pytest.mark.parametrize(
    "data",
    [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"hello, I am text", bytes(range(256)) * 40],
)
def test_not_audio_is_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        audio.decode_upload(data, max_duration_ms=10_000)


def test_too_long_upload_is_refused_by_duration() -> None:
    data = audio_file(chirp(2.0, 16_000), 16_000, "WAV")
    with pytest.raises(InvalidInput, match="max_upload_duration_ms"):
        audio.decode_upload(data, max_duration_ms=1_000)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_round_trip(fmt: str) -> None:
    samples = chirp(0.5)
    data = audio.encode(samples, fmt)
    back, rate, channels = read(data)
    assert (rate, channels, len(back)) == (24_000, 1, len(samples))
    assert np.max(np.abs(back - samples)) < 1e-3  # 16-bit quantisation


def test_unknown_format_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        audio.encode(chirp(0.1), "aiff")
