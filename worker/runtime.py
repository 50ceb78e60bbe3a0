"""What a worker process makes once at start-up and passes to every job: the shared bundle
(``shared.resources.Resources``) plus the engine, the worker's name and its own parts.

The step publisher (every running turn's Redis writes, one pipeline a step) opens with the
runtime and closes in :meth:`WorkerRuntime.close`.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.orm import Session

from shared.resources import Resources
from shared.settings import Settings
from worker.db_retry import retry_db
from worker.metrics import WorkerMetrics
from worker.step_publisher import StepPublisher

if TYPE_CHECKING:
    from worker.engine.csm import CsmEngine

T = TypeVar("T")


def worker_name() -> str:
    return f"parley-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


class HeldJobs:
    """The jobs this worker holds now. Its heartbeat lists them, so recovery can tell a job
    whose worker is alive but lost it (gave up during an outage) from one in progress.

    Holds are counted: a duplicate message for a job this worker runs (a re-send after Redis
    lost its data) is held and let go by its own task, while the job stays held by the task
    that runs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: Counter[str] = Counter()
        self.on_change: Callable[[], None] = lambda: None

    def add(self, job_id: str) -> None:
        """Hold a job; the heartbeat says so at once (before the job is marked running)."""
        with self._lock:
            self._holds[job_id] += 1
        self.on_change()

    def discard(self, job_id: str) -> None:
        """Let go of one hold of the job (the job stays held while another task holds it)."""
        with self._lock:
            self._holds[job_id] -= 1
            if self._holds[job_id] <= 0:
                del self._holds[job_id]

    def snapshot(self) -> list[str]:
        with self._lock:
            return sorted(self._holds)


@dataclass
class WorkerRuntime(Resources):
    engine: CsmEngine
    name: str
    publisher: StepPublisher  # every running turn's per-step Redis writes, one pipeline a step
    held: HeldJobs = field(default_factory=HeldJobs)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    @classmethod
    def create(
        cls, settings: Settings, engine: CsmEngine, *, name: str | None = None
    ) -> WorkerRuntime:
        base = Resources.open(settings, redis_timeout_s=10, redis_connect_timeout_s=5)
        publisher = StepPublisher(base.redis)
        publisher.start()
        return cls(
            **base.shared(),
            engine=engine,
            name=name or worker_name(),
            publisher=publisher,
        )

    @property
    def model_label(self) -> str:
        """The model as jobs and /readyz name it; a test model says so."""
        if self.engine.is_test_model:
            return f"{self.engine.model_name} (test model: random weights, audio is noise)"
        return self.engine.model_name

    def in_sql(self, what: str, work: Callable[[Session], T], *, read_only: bool = False) -> T:
        """``work(session)`` in a fresh session, committed afterwards (unless ``read_only``:
        then one that never takes SQLite's write lock), waiting out a database outage with
        what the worker holds in hand (``PARLEY_DB_RETRY_S``, see ``worker.db_retry``)."""

        def attempt() -> T:
            with (self.reads if read_only else self.sessions)() as session:
                result = work(session)
                if not read_only:
                    session.commit()
                return result

        return retry_db(attempt, what=what, patience_s=self.settings.db_retry_s)

    def close(self) -> None:
        self.publisher.stop()
        super().close()
