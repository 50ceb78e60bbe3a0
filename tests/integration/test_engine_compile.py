"""Inductor-compiled frame-loop steps (worker/engine/step_graphs.py) against eager, on CPU. Not
a unit test: inductor builds C++ with the machine's compiler, which takes minutes when its
cache is cold. The other step tests: tests/unit/test_engine_step_graphs.py.
This module builds its own tiny checkpoint (tests/step_scenarios.py) so it also runs with
``--noconftest``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.frames import run_frames
from tests.step_scenarios import step_prompts, step_scenario, tiny_engine_fixture  # noqa: F401
from worker.engine.frame_loop import FrameLoop

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.slow
def test_inductor_steps_equal_eager_after_a_warm_up_that_covers_them(tiny_engine: Any) -> None:
    prompts = step_prompts(tiny_engine)
    eager = run_frames(FrameLoop(tiny_engine._model, max_batch=2), step_scenario(prompts))
    compiled = FrameLoop(tiny_engine._model, max_batch=2, compile="inductor")
    shapes = compiled.warm_up(max_span=256)
    # buckets 1 and 2: a backbone step at span 256, a greedy and a sampled depth pass
    assert shapes == 6
    got = run_frames(compiled, step_scenario(prompts))
    assert compiled.compile_mode == "inductor"
    assert compiled._steps.captured == shapes, "a turn compiled something the warm-up had not"
    assert set(got) == {"a", "b", "c"}
    for key in eager:
        assert len(eager[key]) == {"a": 5, "b": 9, "c": 6}[key]
        np.testing.assert_array_equal(got[key], eager[key], err_msg=key)
    # and the same audio, decoded from the same codes
    a_eager, a_compiled = (tiny_engine.decode(x["b"].astype(np.int64)) for x in (eager, got))
    np.testing.assert_array_equal(a_compiled, a_eager)
