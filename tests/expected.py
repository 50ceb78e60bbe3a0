"""Expected codes, computed in the test process by the real engine from served codes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Served(Protocol):
    """What serves a turn's codes: a :class:`tests.stack.Stack`, a
    :class:`tests.processes.Deployment`."""

    def codes(self, cid: str, tid: str) -> list[list[int]]: ...


def served_codes(stack: Served, cid: str, tid: str) -> np.ndarray:
    """A turn's codes as the API serves them, (frames, n_q)."""
    return np.asarray(stack.codes(cid, tid), dtype=np.int64).T


def expected_codes(
    engine: Any,
    stack: Served,
    cid: str,
    context_turns: list[dict[str, Any]],
    speaker: int,
    text: str,
    *,
    head: Sequence[Any] = (),
    **params: Any,
) -> np.ndarray:
    """What the engine speaks for ``text`` with exactly ``context_turns`` (oldest first), after
    the ``ContextTurn``s of ``head`` (a bound voice's reference)."""
    from worker.engine.csm import ContextTurn, SamplingParams

    context = [*head] + [
        ContextTurn(speaker=t["speaker"], text=t["text"], codes=served_codes(stack, cid, t["id"]))
        for t in context_turns
    ]
    sampling = SamplingParams(
        temperature=params.get("temperature", 0.0),
        top_k=params.get("top_k", 50),
        max_frames=params.get("max_audio_length_ms", 800) // 80,
        seed=params.get("seed"),
    )
    return np.asarray(engine.generate(context, speaker, text, sampling))
