"""Audio containers and resampling (soundfile, soxr). Parley's audio is 24 kHz mono."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from shared.errors import InvalidInput

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # one Mimi frame: 80 ms at 24 kHz
FRAME_MS = 80

AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}


def decode_upload(data: bytes, *, max_duration_ms: int) -> np.ndarray:
    """Any container soundfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) at any rate
    → float32 mono 24 kHz. Judged by content alone; raises InvalidInput for anything else."""
    if not data:
        raise InvalidInput("the audio upload is empty", code="invalid_audio")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            duration_ms = 1000 * f.frames / f.samplerate if f.samplerate else 0
            if duration_ms > max_duration_ms:
                raise InvalidInput(
                    f"the audio upload is {duration_ms:.0f} ms long; the limit is "
                    f"{max_duration_ms} ms (max_upload_duration_ms)",
                    code="audio_too_long",
                )
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"the upload is not audio in a format Parley reads: {exc}", code="invalid_audio"
        ) from exc
    mono = samples.mean(axis=1)
    if mono.size == 0:
        raise InvalidInput("the audio upload holds no samples", code="invalid_audio")
    if not np.all(np.isfinite(mono)):
        raise InvalidInput("the audio upload holds non-finite samples", code="invalid_audio")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def encode(audio: np.ndarray, fmt: str) -> bytes:
    """float32 mono 24 kHz → a wav or flac file (16-bit PCM)."""
    if fmt not in AUDIO_MEDIA_TYPES:
        raise InvalidInput(
            f"unknown audio format {fmt!r}; use one of {sorted(AUDIO_MEDIA_TYPES)}",
            code="invalid_format",
        )
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """A stored turn's FLAC → float32 mono 24 kHz."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    if rate != SAMPLE_RATE:
        raise ValueError(f"stored audio is {rate} Hz, expected {SAMPLE_RATE}")
    return samples


def transcode(flac: bytes, fmt: str) -> bytes:
    """A stored turn's FLAC → the requested container."""
    if fmt == "flac":
        return flac
    return encode(decode_flac(flac), fmt)
