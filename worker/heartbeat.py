"""A background thread that tells Redis this worker is alive and which model it runs, and after
each beat looks for turns whose worker vanished (``shared.recovery``)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from redis.exceptions import RedisError

from shared.queue import enqueue_job
from shared.recovery import OrphanReconciler
from shared.workers import beat, forget
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, rt: WorkerRuntime, info: dict[str, Any]) -> None:
        self.rt = rt
        self.info = info
        self.period_s = rt.settings.worker_heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parley-heartbeat", daemon=True)
        self.reconciler = OrphanReconciler(
            sessions=rt.sessions,
            redis=rt.redis,
            keys=rt.keys,
            me=rt.name,
            enqueue=lambda job_id, cid: enqueue_job(rt.celery, rt.settings, job_id, cid),
        )

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        try:
            beat(
                self.rt.redis,
                self.rt.keys,
                name=self.rt.name,
                info=self.info,
                ttl_s=3 * self.period_s,
            )
        except RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._beat()
            try:
                self.reconciler.run_once()
            except Exception as exc:  # a database or Redis blip: try again next beat
                log.warning("recovery pass failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 1)
        try:
            forget(self.rt.redis, self.rt.keys, name=self.rt.name)
        except RedisError as exc:
            log.warning("could not remove heartbeat: %s", exc)
