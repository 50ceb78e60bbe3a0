"""bench.engine_bench's CPU thread comparison at tiny size: its shape, not its timings."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench import engine_bench


def test_loop_in_a_thread_compares_one_thread_with_one_per_core(tiny_model_dir: Path) -> None:
    model = engine_bench.load_model("tiny", "cpu", tiny_model_dir)
    before = torch.get_num_threads()
    out = engine_bench.loop_in_a_thread(model, sizes=[1, 2], steps=3, repeats=1)
    assert torch.get_num_threads() == before  # the setting is given back
    cores = os.cpu_count() or 1
    assert out["cores"] == cores
    assert set(out["ms_per_frame"]) == {"1", str(cores)}
    for by_size in out["ms_per_frame"].values():
        assert set(by_size) == {"1", "2"}
        assert all(ms > 0 for ms in by_size.values())
    assert out["vs_batch_1"]["1"] == 1.0
    assert set(out["per_core_over_one"]) == {"1", "2"}
