"""Faster or slower speech at the same pitch: FFmpeg's ``atempo`` filter (WSOLA) through PyAV.

``atempo`` takes factors from 0.5 to 100 per instance; a factor below 0.5 runs as two chained
instances of its square root. The output is ``len / speed`` samples give or take what the
filter's window does at the two ends: at most 3200 samples (133 ms) whatever the length,
measured from 0.25 to 4.0 on 80 ms to 30 s of audio. A speed of 1.0 is never filtered: the
samples pass unchanged.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import av.error
import av.filter
import numpy as np

from shared.audio.codecs import pcm16_frame
from shared.audio.containers import SAMPLE_RATE

MIN_SPEED = 0.25
MAX_SPEED = 4.0
ATEMPO_MIN = 0.5


class TempoStretch:
    """Changes the speed of 16-bit mono 24 kHz audio chunk by chunk: :meth:`feed` returns what
    the filter has ready (it holds back up to about one chunk), :meth:`finish` the rest."""

    def __init__(self, speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        factors = [speed] if speed >= ATEMPO_MIN else [math.sqrt(speed)] * 2
        self._graph = av.filter.Graph()
        nodes = [
            self._graph.add_abuffer(
                format="s16",
                sample_rate=SAMPLE_RATE,
                layout="mono",
                time_base=Fraction(1, SAMPLE_RATE),
            )
        ]
        nodes += [self._graph.add("atempo", f"{f:.6f}") for f in factors]
        nodes.append(
            self._graph.add(
                "aformat", f"sample_fmts=s16:channel_layouts=mono:sample_rates={SAMPLE_RATE}"
            )
        )
        nodes.append(self._graph.add("abuffersink"))
        for source, target in zip(nodes, nodes[1:], strict=False):
            source.link_to(target)
        self._graph.configure()
        self._pts = 0

    def feed(self, samples: np.ndarray) -> np.ndarray:
        if samples.size:
            frame = pcm16_frame(samples, pts=self._pts)
            self._pts += frame.samples
            self._graph.push(frame)
        return self._drain()

    def finish(self) -> np.ndarray:
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        parts: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            parts.append(frame.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def stretch(samples: np.ndarray, speed: float) -> np.ndarray:
    """All of ``samples`` (int16) at ``speed``; unchanged at 1.0."""
    if speed == 1.0:
        return samples
    tempo = TempoStretch(speed)
    return np.concatenate([tempo.feed(samples), tempo.finish()])
