"""``make bench``'s concurrent-turns figures (``bench.service_concurrency``) at a tiny size
against a real ``parley api`` and ``parley worker``, with the worker's CPU split by thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import service_bench, service_concurrency


@pytest.mark.slow
def test_concurrent_turns_through_one_worker(tiny_model_dir: Path) -> None:
    env = {"PARLEY_MAX_BATCH": "4", "PARLEY_WORKER_TORCH_THREADS": "1"}
    with service_bench.stack(str(tiny_model_dir), env) as (client, ready):
        out = service_concurrency.concurrent_turns(
            client, worker_pid=int(ready["workers"][0]["pid"]), sizes=[1, 3], frames=6, rounds=1
        )
    one, three = out["sizes"]["1"], out["sizes"]["3"]
    assert one["frames"] == 6 and three["frames"] == 18 and one["vs_first_size"] == 1.0
    assert three["first_audio_ms"]["n"] == 3
    cpu = three["worker_cpu_ms_per_frame"]
    assert cpu["frame_loop"] > 0 and cpu["task_threads"] > 0  # the worker named its threads
    parts = cpu["frame_loop"] + cpu["task_threads"] + cpu["rest"]
    assert parts == pytest.approx(cpu["total"], abs=1.0)
    # the frame loop's share, cut by where its thread's time went (from the heartbeat)
    assert cpu["model"] > 0 and cpu["decode"] > 0
    loop_parts = cpu["model"] + cpu["decode"] + cpu["loop_other"]
    assert loop_parts == pytest.approx(cpu["frame_loop"], abs=1e-6)
