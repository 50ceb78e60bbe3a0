"""Two background threads of a worker.

- ``parley-heartbeat`` tells Redis, once a period, that this worker is alive, which model it
  runs, which jobs it holds and how full its batch is, and sends the worker's metrics
  (``worker.metrics``). It touches Redis only, so nothing the database does can delay a beat: a
  worker busy behind SQLite's write lock or a slow PostgreSQL is never taken for dead, and its
  turns are never spoken twice for that.
- ``parley-recovery`` runs, once a period, the recovery pass (``shared.jobs.recovery``) and re-sends
  voices whose encoding task was lost (``worker.voices``). These may wait on the database.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from redis.exceptions import RedisError

from shared.jobs.queue import broker_queue_key, enqueue_job
from shared.jobs.recovery import OrphanReconciler
from shared.redis_io.heartbeats import beat, forget
from worker.consumer_watch import ConsumerState
from worker.runtime import WorkerRuntime
from worker.voices import resend_stale_voices

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, rt: WorkerRuntime, consumer: ConsumerState, info: dict[str, Any]) -> None:
        self.rt = rt
        self.consumer = consumer
        self.info = info
        self.period_s = rt.settings.worker_heartbeat_s
        self._stop = threading.Event()
        self._beat_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._beat_loop, name="parley-heartbeat", daemon=True),
            threading.Thread(target=self._recovery_loop, name="parley-recovery", daemon=True),
        ]
        self.reconciler = OrphanReconciler(
            sessions=rt.sessions,
            reads=rt.reads,
            redis=rt.redis,
            keys=rt.keys,
            me=rt.name,
            enqueue=lambda job_id, cid: enqueue_job(rt.celery, rt.settings, job_id, cid),
            broker_queue=broker_queue_key(rt.settings),
        )

    def start(self) -> None:
        self._beat()
        self.rt.held.on_change = self._beat  # a job held is announced before it runs
        self.consumer.on_change = self._beat  # and a consumer that stops or starts, at once
        for thread in self._threads:
            thread.start()

    def _beat(self) -> None:
        with self._beat_lock:  # task threads and the heartbeat thread both beat
            try:
                beat(
                    self.rt.redis,
                    self.rt.keys,
                    name=self.rt.name,
                    info={
                        **self.info,
                        "jobs": self.rt.held.snapshot(),
                        "consuming": self.consumer.consuming,
                        "batch_rows": self.rt.engine.batcher.active,
                        "engine_busy_s": dict(self.rt.engine.batcher.busy_s),
                    },
                    ttl_s=3 * self.period_s,
                )
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _flush_metrics(self) -> None:
        batcher = self.rt.engine.batcher
        self.rt.metrics.flush(self.rt.redis, self.rt.keys, batch_steps=batcher.steps_by_rows)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._beat()
            self._flush_metrics()

    def _recovery_loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.reconciler.run_once()
                resend_stale_voices(self.rt)
            except Exception as exc:  # a database or Redis blip: try again next beat
                log.warning("recovery pass failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.period_s + 1)
        self._flush_metrics()
        try:
            forget(self.rt.redis, self.rt.keys, name=self.rt.name)
        except RedisError as exc:
            log.warning("could not remove heartbeat: %s", exc)
