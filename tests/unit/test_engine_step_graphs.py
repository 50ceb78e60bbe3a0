"""Compiled and CUDA-graphed frame-loop steps (worker/engine/step_graphs.py): the compile
setting, the shape buckets, and CUDA-graph steps against eager, which run wherever a GPU is at
hand and skip without. Inductor on CPU (a C++ build, minutes when its cache is cold):
tests/integration/test_engine_compile.py.
This module builds its own tiny checkpoint (tests/step_scenarios.py) so it also runs with
``--noconftest`` on a GPU machine that lacks the service's dependencies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.frames import run_frames
from tests.step_scenarios import step_prompts, step_scenario, tiny_engine_fixture  # noqa: F401
from worker.engine.frame_loop import FrameLoop
from worker.engine.step_graphs import batch_buckets, bucket_for, resolve_compile_mode, span_for

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_compile_setting_resolves_per_device() -> None:
    assert resolve_compile_mode("auto", CPU) == "off"
    assert resolve_compile_mode("1", CUDA) == "graphs"
    assert resolve_compile_mode("0", CUDA) == "off"
    assert resolve_compile_mode("Inductor", CPU) == "inductor"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_compile_mode("graphs", CPU)
    with pytest.raises(ValueError, match="unknown compile mode"):
        resolve_compile_mode("fast", CPU)


def test_the_compile_setting_refuses_unknown_modes() -> None:
    from shared.settings import Settings  # pydantic-settings: not on the GPU machines

    assert Settings(compile="OFF").compile == "off"
    with pytest.raises(ValueError, match="unknown compile mode"):
        Settings(compile="fast")


def test_buckets_hold_every_batch_and_span() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert [bucket_for(n, batch_buckets(12)) for n in (1, 3, 8, 9, 12)] == [1, 4, 8, 12, 12]
    assert [span_for(s, 2048) for s in (1, 256, 257, 2047, 2048)] == [256, 256, 512, 2048, 2048]


def test_an_engine_refuses_graphs_without_cuda(tiny_engine: Any) -> None:
    from shared.errors import ModelLoadError
    from worker.engine.csm import CsmEngine

    with pytest.raises(ModelLoadError, match="needs CUDA"):
        CsmEngine.load(tiny_engine.model_name, device="cpu", compile="graphs")


@needs_cuda
@pytest.mark.parametrize("mode", ["graphs", "inductor+graphs"])
def test_cuda_graph_steps_equal_eager(tiny_engine: Any, mode: str) -> None:
    model = tiny_engine._model.to(CUDA)
    try:
        prompts = [p.to(CUDA) for p in step_prompts(tiny_engine)]
        eager = run_frames(FrameLoop(model, max_batch=4), step_scenario(prompts))
        graphed = FrameLoop(model, max_batch=4, compile=mode)  # type: ignore[arg-type]
        shapes = graphed.warm_up(max_span=512)
        got = run_frames(graphed, step_scenario(prompts))
        assert graphed._steps.captured == shapes
        for key in eager:
            np.testing.assert_array_equal(got[key], eager[key], err_msg=key)
    finally:
        tiny_engine._model.to(CPU)
