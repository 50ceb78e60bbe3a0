"""``parley worker``: load the model once in this process, then consume turns.

The pool is threads, so the model lives in the one process that runs it (CUDA is never
initialised in a parent that forks). Concurrency is ``max_batch``: each task thread hands its
turn to the engine's frame loop, which runs them all together, and streams its own frames.
"""

from __future__ import annotations

import logging
import os

from shared.errors import DeviceUnavailable, ModelLoadError
from shared.settings import Settings
from worker.celery_app import create_worker_app
from worker.heartbeat import Heartbeat
from worker.model_loading import load_engine
from worker.runtime import WorkerRuntime
from worker.thread_names import name_os_threads

log = logging.getLogger(__name__)


def route_library_logs() -> None:
    """transformers has a stderr handler of its own; send its lines through ours instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def run_worker(settings: Settings, *, name: str | None = None) -> int:
    route_library_logs()
    name_os_threads()
    if settings.worker_torch_threads:
        import torch

        torch.set_num_threads(settings.worker_torch_threads)
    try:
        engine = load_engine(settings)
    except (DeviceUnavailable, ModelLoadError) as exc:
        log.error("worker cannot start: %s", exc.message)
        return 2
    engine.warm_up()
    rt = WorkerRuntime.create(settings, engine, name=name)
    log.info(
        "worker %s serving %s on %s (compile: %s)",
        rt.name,
        rt.model_label,
        engine.device,
        engine.compile_mode,
    )
    heartbeat = Heartbeat(
        rt,
        {
            "name": rt.name,
            "model": rt.model_label,
            "test_model": engine.is_test_model,
            "device": engine.device,
            "pid": os.getpid(),
            "max_batch": engine.batcher.max_batch,
            "compile": engine.compile_mode,
        },
    )
    heartbeat.start()
    app = create_worker_app(rt)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.max_batch}",
        f"--queues={settings.queue_name}",
        f"--hostname={rt.name}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    if not settings.celery_events:  # Flower shows a worker online from its event heartbeats
        argv.append("--without-heartbeat")
    if settings.log_format == "json":  # no banner (`celery --quiet worker`)
        argv.insert(0, "--quiet")
    try:
        app.worker_main(argv)
    finally:
        heartbeat.stop()
        rt.close()
    return 0
