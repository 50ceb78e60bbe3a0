"""Inductor-compiled frame-loop steps (worker/engine/step_graphs.py) against eager, on CPU. Not
a unit test: inductor builds C++ with the machine's compiler, which takes minutes when its
cache is cold. The other step tests: tests/unit/test_engine_step_graphs.py.
This module builds its own tiny checkpoint so it also runs with ``--noconftest``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.frames import run_frames
from worker.engine.frame_loop import FrameLoop
from worker.engine.types import SamplingParams

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def tiny_engine() -> Any:
    from worker.engine.csm import CsmEngine
    from worker.engine.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="parley-steps-")) / "m", seed=0)
    return CsmEngine.load(str(folder), device="cpu", compile="off")


def _prompts(engine: Any) -> list[torch.Tensor]:
    texts = ["The first turn, a little longer than the rest.", "Second.", "A third one."]
    return [engine._prompt.embed([], i % 2, text)[0] for i, text in enumerate(texts)]


def _scenario(prompts: list[torch.Tensor]) -> dict[int, list[tuple[str, Any, SamplingParams]]]:
    """A greedy turn alone for 3 frames, then a second joins, a sampled third joins at step 6
    (the first has left by then: rows of different lengths move between slots)."""
    return {
        0: [("a", prompts[0], SamplingParams(0, 0, 5))],
        3: [("b", prompts[1], SamplingParams(0, 0, 9))],
        6: [("c", prompts[2], SamplingParams(0.9, 50, 6, seed=7))],
    }


@pytest.mark.slow
def test_inductor_steps_equal_eager_after_a_warm_up_that_covers_them(tiny_engine: Any) -> None:
    prompts = _prompts(tiny_engine)
    eager = run_frames(FrameLoop(tiny_engine._model, max_batch=2), _scenario(prompts))
    compiled = FrameLoop(tiny_engine._model, max_batch=2, compile="inductor")
    shapes = compiled.warm_up(max_span=256)
    # buckets 1 and 2: a backbone step at span 256, a greedy and a sampled depth pass
    assert shapes == 6
    got = run_frames(compiled, _scenario(prompts))
    assert compiled.compile_mode == "inductor"
    assert compiled._steps.captured == shapes, "a turn compiled something the warm-up had not"
    assert set(got) == {"a", "b", "c"}
    for key in eager:
        assert len(eager[key]) == {"a": 5, "b": 9, "c": 6}[key]
        np.testing.assert_array_equal(got[key], eager[key], err_msg=key)
    # and the same audio, decoded from the same codes
    a_eager, a_compiled = (tiny_engine.decode(x["b"].astype(np.int64)) for x in (eager, got))
    np.testing.assert_array_equal(a_compiled, a_eager)
