"""Fuzzing uploads with hypothesis: the settings, real seed files of the formats people upload,
and a strategy that mutates them. Used by tests/unit/test_audio_decode_fuzz.py and
tests/api/test_upload_fuzz.py."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.sounds import audio_file, chirp

MAX_DURATION_MS = 5_000
SEED_SECONDS = 0.15
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# (container, subtype, rate, channels): what people upload, and a few codecs inside WAV.
SEED_KINDS = [
    ("WAV", "PCM_16", 24_000, 1),
    ("WAV", "FLOAT", 44_100, 2),
    ("WAV", "IMA_ADPCM", 16_000, 1),
    ("WAV", "ULAW", 8_000, 1),
    ("FLAC", "PCM_16", 48_000, 2),
    ("OGG", "VORBIS", 22_050, 1),
    ("OGG", "OPUS", 48_000, 1),
    ("MP3", "MPEG_LAYER_III", 24_000, 1),
    ("AIFF", "PCM_24", 32_000, 1),
]


@functools.cache
def seed_files() -> tuple[bytes, ...]:
    return tuple(
        audio_file(chirp(SEED_SECONDS, rate, channels=channels), rate, fmt, subtype)
        for fmt, subtype, rate, channels in SEED_KINDS
    )


@st.composite
def mutated_audio(draw: st.DrawFn) -> bytes:
    """A real file, then a few edits: bytes and 32-bit words overwritten (mostly in the header,
    where sizes, rates and channel counts live), cuts, splices and truncation."""
    data = bytearray(draw(st.sampled_from(seed_files())))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        if size < 8:
            break
        at = draw(st.one_of(st.integers(0, min(size, 128) - 1), st.integers(0, size - 1)))
        edit = draw(st.sampled_from(["byte", "byte", "word", "word", "cut", "splice", "truncate"]))
        if edit == "byte":
            data[at] = draw(st.integers(0, 255))
        elif edit == "word":
            word = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 16]))
            data[at : at + 4] = word.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif edit == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "splice":
            start = draw(st.integers(0, size - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)
