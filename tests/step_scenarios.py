"""Frame-loop step tests' common ground: the ``tiny_engine`` fixture (a tiny checkpoint built on
the spot, so modules using it run with ``--noconftest``; import ``tiny_engine_fixture``), three
prompts, and a scenario of turns joining and leaving. Used by
tests/unit/test_engine_step_graphs.py and tests/integration/test_engine_compile.py."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.engine.types import SamplingParams


@pytest.fixture(scope="module", name="tiny_engine")
def tiny_engine_fixture() -> Any:
    """The tiny checkpoint, built here (no conftest needed), loaded eager on CPU."""
    from worker.engine.csm import CsmEngine
    from worker.engine.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="parley-steps-")) / "m", seed=0)
    return CsmEngine.load(str(folder), device="cpu", compile="off")


def step_prompts(engine: Any) -> list[torch.Tensor]:
    texts = ["The first turn, a little longer than the rest.", "Second.", "A third one."]
    return [engine._prompt.embed([], i % 2, text)[0] for i, text in enumerate(texts)]


def step_scenario(prompts: list[torch.Tensor]) -> dict[int, list[tuple[str, Any, SamplingParams]]]:
    """A greedy turn alone for 3 frames, then a second joins, a sampled third joins at step 6
    (the first has left by then: rows of different lengths move between slots)."""
    return {
        0: [("a", prompts[0], SamplingParams(0, 0, 5))],
        3: [("b", prompts[1], SamplingParams(0, 0, 9))],
        6: [("c", prompts[2], SamplingParams(0.9, 50, 6, seed=7))],
    }
