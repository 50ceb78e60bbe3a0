"""Mimi codes as bytes: int16 little endian, (frames, n_q) row major."""

from __future__ import annotations

import numpy as np


def codes_to_bytes(codes: np.ndarray) -> bytes:
    if codes.ndim != 2:
        raise ValueError(f"codes must be (frames, n_q), got shape {codes.shape}")
    return np.ascontiguousarray(codes, dtype="<i2").tobytes()


def codes_from_bytes(data: bytes, n_q: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").reshape(-1, n_q).astype(np.int64)
