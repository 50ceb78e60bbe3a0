"""``parley worker``: load the model once in this process, then consume turns.

The pool is threads, so the model lives in the one process that runs it (CUDA is never
initialised in a parent that forks). Concurrency is ``max_batch``: each task thread hands its
turn to the engine's frame loop, which runs them all together, and streams its own frames.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from shared.contract.heartbeat import WorkerBeat
from shared.errors import DeviceUnavailable, ModelLoadError
from shared.settings import Settings
from worker.celery_app import create_worker_app
from worker.consumer_watch import EXIT_CANNOT_SERVE, ConsumerState, Watchdog, watch_consumer
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
    consumer = ConsumerState()
    heartbeat = Heartbeat(
        rt,
        consumer,
        WorkerBeat(
            name=rt.name,
            model=rt.model_label,
            test_model=engine.is_test_model,
            device=engine.device,
            pid=os.getpid(),
            max_batch=engine.batcher.max_batch,
            compile=engine.compile_mode,
        ),
    )
    heartbeat.start()
    watchdog = Watchdog(
        consumer,
        timeout_s=settings.worker_broker_timeout_s,
        period_s=min(1.0, settings.worker_heartbeat_s),
    )
    watchdog.start()
    app = create_worker_app(rt)
    watch_consumer(app, consumer)
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
    controllers: list[Any] = []

    def keep_controller(sender: Any, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            controllers.append(sender)

    # Celery's command returns no exit code; its WorkController keeps it (non-zero when the
    # consumer died: "Unrecoverable error").
    signals.worker_init.connect(keep_controller, weak=False)
    try:
        app.start(argv)
    finally:
        signals.worker_init.disconnect(keep_controller)
        watchdog.stop()
        heartbeat.stop()
        rt.close()
    if watchdog.gave_up:
        return EXIT_CANNOT_SERVE
    code = controllers[0].exitcode if controllers else None
    if code:
        log.error("worker %s stopped with code %s; its supervisor replaces it", rt.name, code)
    return int(code or 0)
