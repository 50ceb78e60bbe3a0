"""Driving a ``FrameLoop`` in tests: admit turns at given steps, collect every turn's frames."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.engine.frame_loop import FrameLoop
from worker.engine.types import SamplingParams

Join = tuple[str, Any, SamplingParams]


def run_frames(loop: FrameLoop, joins: dict[int, list[Join]]) -> dict[str, np.ndarray]:
    """Step ``loop`` until empty; ``joins[n]`` are admitted before step ``n``. Each admitted
    turn's frames ``(frames, num_codebooks)`` int64, by key."""
    frames: dict[str, list[np.ndarray]] = {}
    step = 0
    while loop.rows or any(n >= step for n in joins):
        for key, embeds, params in joins.get(step, []):
            loop.admit(key, embeds, params)
            frames[key] = []
        for result in loop.step():
            if result.frame is not None:
                frames[str(result.key)].append(result.frame.cpu().numpy())
        step += 1
    width = loop.num_codebooks
    return {k: np.array(v, dtype=np.int64).reshape(-1, width) for k, v in frames.items()}
