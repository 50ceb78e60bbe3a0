"""Real audio for uploads: chirps and noise written by soundfile in common containers."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def chirp(seconds: float, rate: int = 24_000, *, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0, f1 = 150 + 50 * seed, 900 + 100 * seed
    tone = 0.4 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / max(seconds, 1e-3)) * t)
    mono = (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def audio_file(
    samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def read(data: bytes) -> tuple[np.ndarray, int, int]:
    """(samples, sample rate, channels) of a served audio file."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.read(dtype="float32"), f.samplerate, f.channels
