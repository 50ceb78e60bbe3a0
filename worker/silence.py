"""The silent-tail guard: end a turn after a run of silent frames and cut its silent tail.

The base model sometimes never emits its end frame and pads the turn with silence up to the
length bound. :class:`SilenceGuard` sits between the frame loop and whatever emits frames
(stream and store), holding back just enough silent frames that what is streamed is exactly
what is stored, and a turn that never triggers the guard is emitted unchanged.

Levels can be measured for many frames at once (:func:`frames_dbfs`, one vectorised pass over a
step's frames) and handed to :meth:`SilenceGuard.push`; they equal :func:`frame_dbfs` exactly,
so the guard decides the same either way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shared.settings import Settings

# One generated frame: Mimi codes ``(num_codebooks,)`` int64 and its decoded float32 samples.
Frame = tuple[np.ndarray, np.ndarray]


def frame_dbfs(samples: np.ndarray) -> float:
    """RMS level of ``samples`` in dB relative to full scale 1.0.

    An all-zero (or empty) frame has no energy and gives ``-inf``. Non-finite samples give
    ``nan`` or ``inf``, which no threshold counts as silent.
    """
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        return -math.inf
    return _dbfs(float(np.mean(np.square(values))))


def frames_dbfs(frames: np.ndarray) -> list[float]:
    """:func:`frame_dbfs` of every row of ``frames`` ``(n, samples)``, bit for bit, with the
    squares and means of all rows in one vectorised call (each row's mean is summed exactly as
    a row alone is)."""
    values = np.asarray(frames, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"frames must be 2-D (frames, samples), got shape {values.shape}")
    if values.shape[1] == 0:
        return [-math.inf] * values.shape[0]
    return [_dbfs(float(ms)) for ms in np.mean(np.square(values), axis=1)]


def _dbfs(mean_square: float) -> float:
    rms = math.sqrt(mean_square)
    if rms == 0.0:
        return -math.inf
    return 20.0 * math.log10(rms)


class SilenceGuard:
    """Hold back trailing silent frames of one turn; stop the turn after a long silent run.

    A frame is silent when ``frame_dbfs(samples) < threshold_dbfs`` (strictly below).

    - A non-silent frame is emitted at once, preceded by every held silent frame, in order:
      a pause in the middle of speech is kept whole.
    - In a run of consecutive silent frames, the first ``keep_frames`` are emitted at once;
      the later ones are held.
    - When the run reaches ``tail_frames`` frames, :attr:`triggered` becomes True and the
      held frames (``tail_frames - keep_frames`` of them) are dropped: the caller stops
      generating, and :meth:`finish` returns nothing. The emitted turn then ends with exactly
      ``keep_frames`` silent frames.
    - At a natural end without triggering, :meth:`finish` returns the held frames, so the
      frames emitted over the whole turn are exactly the frames pushed.

    One guard serves one turn. Frames are passed through as given (never copied or changed).
    """

    def __init__(self, *, threshold_dbfs: float, tail_frames: int, keep_frames: int) -> None:
        """
        Args:
            threshold_dbfs: Level below which a frame is silent; finite and ``<= 0``.
            tail_frames: Length of the silent run that ends the turn; ``>= 1``.
            keep_frames: Silent frames of a run emitted at once (the natural pause kept at
                the end of a triggered turn); ``0 <= keep_frames < tail_frames``.
        """
        if not (math.isfinite(threshold_dbfs) and threshold_dbfs <= 0):
            raise ValueError(f"threshold_dbfs must be finite and <= 0 dBFS, got {threshold_dbfs}")
        if tail_frames < 1:
            raise ValueError(f"tail_frames must be >= 1, got {tail_frames}")
        if not 0 <= keep_frames < tail_frames:
            raise ValueError(
                f"keep_frames must satisfy 0 <= keep_frames < tail_frames ({tail_frames}), "
                f"got {keep_frames}"
            )
        self.threshold_dbfs = float(threshold_dbfs)
        self.tail_frames = tail_frames
        self.keep_frames = keep_frames
        self.triggered = False
        self.silent_run_frames = 0  # length of the current run of silent frames
        self.emitted_frames = 0
        self.dropped_frames = 0
        self._held: list[Frame] = []
        self._finished = False

    @classmethod
    def from_settings(cls, settings: Settings, frame_ms: int = 80) -> SilenceGuard | None:
        """The guard the settings ask for, or None when ``silence_guard`` is off.

        ``silence_tail_ms`` is rounded up to whole frames (the run is at least that long);
        ``silence_keep_ms`` is rounded down (no more than that is kept). Settings where the
        kept part is not shorter than the tail raise ValueError.
        """
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
        if not settings.silence_guard:
            return None
        return cls(
            threshold_dbfs=settings.silence_threshold_dbfs,
            tail_frames=-(-settings.silence_tail_ms // frame_ms),
            keep_frames=settings.silence_keep_ms // frame_ms,
        )

    @property
    def held_frames(self) -> int:
        """Silent frames pushed but not yet emitted (nor dropped)."""
        return len(self._held)

    def is_silent(self, samples: np.ndarray) -> bool:
        """Whether a frame of these samples counts as silent."""
        return frame_dbfs(samples) < self.threshold_dbfs

    def push(
        self, codes: np.ndarray, samples: np.ndarray, *, level_dbfs: float | None = None
    ) -> list[Frame]:
        """Take the next generated frame; return the frames safe to emit now, in order.

        ``level_dbfs``, when given, is the frame's level as :func:`frame_dbfs` (or
        :func:`frames_dbfs`) measured it, so it is not measured again.

        Raises RuntimeError once the guard has triggered or finished: the caller must stop.
        """
        if self.triggered or self._finished:
            raise RuntimeError("push() after the silence guard triggered or finished")
        frame = (codes, samples)
        level = frame_dbfs(samples) if level_dbfs is None else level_dbfs
        if not level < self.threshold_dbfs:
            out = [*self._held, frame]
            self._held.clear()
            self.silent_run_frames = 0
            self.emitted_frames += len(out)
            return out
        self.silent_run_frames += 1
        if self.silent_run_frames <= self.keep_frames:
            self.emitted_frames += 1
            return [frame]
        self._held.append(frame)
        if self.silent_run_frames >= self.tail_frames:
            self.triggered = True
            self.dropped_frames = len(self._held)
            self._held.clear()
        return []

    def finish(self) -> list[Frame]:
        """End the turn: the held frames to emit (none when triggered). Later calls return []."""
        self._finished = True
        out = list(self._held)
        self._held.clear()
        self.emitted_frames += len(out)
        return out
