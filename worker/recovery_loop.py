"""The worker's recovery thread, ``parley-recovery``: once a heartbeat period it runs the
recovery pass (``shared.jobs.recovery``) and re-sends voices whose encoding task was lost
(``worker.voice_encoding``). These may wait on the database, so they never share the heartbeat's
thread: a slow database can delay recovery, never a beat."""

from __future__ import annotations

import logging
import threading

from shared.jobs.queue import broker_queue_key, job_sender
from shared.jobs.recovery import OrphanReconciler
from worker.runtime import WorkerRuntime
from worker.voice_encoding import resend_stale_voices

log = logging.getLogger(__name__)


class RecoveryLoop:
    def __init__(self, rt: WorkerRuntime) -> None:
        self.rt = rt
        self.period_s = rt.settings.worker_heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="parley-recovery", daemon=True)
        self.reconciler = OrphanReconciler(
            sessions=rt.sessions,
            reads=rt.reads,
            redis=rt.redis,
            keys=rt.keys,
            me=rt.name,
            enqueue=job_sender(rt.celery, rt.settings),
            broker_queue=broker_queue_key(rt.settings),
        )

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.reconciler.run_once()
                resend_stale_voices(self.rt)
            except Exception as exc:  # a database or Redis blip: try again next beat
                log.warning("recovery pass failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 1)
