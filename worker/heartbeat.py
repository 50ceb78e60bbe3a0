"""The worker's heartbeat thread, ``parley-heartbeat``: once a period it tells Redis that this
worker is alive, which model it runs, which jobs it holds and how full its batch is (a
:class:`~shared.contract.heartbeat.WorkerBeat`), and sends the worker's metrics
(``worker.metrics``). It touches Redis only, so nothing the database does can delay a beat: a
worker busy behind SQLite's write lock or a slow PostgreSQL is never taken for dead, and its
turns are never spoken twice for that. The recovery pass runs on its own thread
(``worker.recovery_loop``), started and stopped with this one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from redis.exceptions import RedisError

from shared.contract.heartbeat import WorkerBeat
from shared.redis_io.heartbeats import beat, forget
from worker.consumer_watch import ConsumerState
from worker.recovery_loop import RecoveryLoop
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, rt: WorkerRuntime, consumer: ConsumerState, info: WorkerBeat) -> None:
        """``info``: what does not change while the worker runs (its name, model, device...)."""
        self.rt = rt
        self.consumer = consumer
        self.info = info
        self.period_s = rt.settings.worker_heartbeat_s
        self._stop = threading.Event()
        self._beat_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._beat_loop, name="parley-heartbeat", daemon=True
        )
        self.recovery = RecoveryLoop(rt)

    def start(self) -> None:
        self._beat()
        self.rt.held.on_change = self._beat  # a job held is announced before it runs
        self.consumer.on_change = self._beat  # and a consumer that stops or starts, at once
        self._thread.start()
        self.recovery.start()

    def record(self) -> WorkerBeat:
        """This worker's heartbeat now."""
        batcher = self.rt.engine.batcher
        return dataclasses.replace(
            self.info,
            jobs=self.rt.held.snapshot(),
            consuming=self.consumer.consuming,
            batch_rows=batcher.active,
            engine_busy_s=dict(batcher.busy_s),
        )

    def _beat(self) -> None:
        with self._beat_lock:  # task threads and the heartbeat thread both beat
            try:
                beat(
                    self.rt.redis,
                    self.rt.keys,
                    name=self.rt.name,
                    info=self.record(),
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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 1)
        self.recovery.stop()
        self._flush_metrics()
        try:
            forget(self.rt.redis, self.rt.keys, name=self.rt.name)
        except RedisError as exc:
            log.warning("could not remove heartbeat: %s", exc)
