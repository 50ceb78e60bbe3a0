"""Recovering turns whose worker vanished (killed, crashed, its machine gone).

SQL says which jobs are running and on which worker; Redis says which workers are alive
(heartbeats). A running job whose worker has been missing on two passes in a row is put back
in its conversation's queue, under the conversation's lock, and the conversation's head job is
claimed for enqueueing again. The job keeps its attempt count; the next worker to start it makes
the next attempt. Only one attempt can store a turn: storing checks the job's worker and attempt.

Every live worker runs a pass after each heartbeat, so a vanished worker's turns come back
within about ``3 × heartbeat + 2 × heartbeat`` (its heartbeat key expiring, then two passes),
never after the broker's hour-long visibility timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.dispatch import claim_next, lock_conversation
from shared.errors import NotFound
from shared.keys import RedisKeys
from shared.models import Job, JobStatus
from shared.workers import live_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orphan:
    job_id: str
    conversation_id: str
    worker: str | None


def requeue_orphan(session: Session, orphan: Orphan) -> tuple[bool, str | None]:
    """Put a running job of a vanished worker back in the queue. Returns (requeued, the job
    to enqueue now, if any). Nothing changes when the job moved on meanwhile."""
    try:
        lock_conversation(session, orphan.conversation_id)
    except NotFound:
        return False, None
    job = session.get(Job, orphan.job_id, populate_existing=True)
    if job is None or job.status != JobStatus.RUNNING or job.worker != orphan.worker:
        session.commit()
        return False, None
    job.status = job.turn.status = JobStatus.QUEUED
    job.dispatched = False
    job.worker = None
    job.started_at = None
    next_job_id = claim_next(session, orphan.conversation_id)
    session.commit()
    return True, next_job_id


class OrphanReconciler:
    """Finds and requeues orphaned jobs; one per worker process, run after each heartbeat."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        redis: Redis,
        keys: RedisKeys,
        me: str,
        enqueue: Callable[[str, str], None],
    ) -> None:
        """``me`` is this worker's name; ``enqueue(job_id, conversation_id)`` sends a job."""
        self._sessions = sessions
        self._redis = redis
        self._keys = keys
        self._me = me
        self._enqueue = enqueue
        self._suspects: set[Orphan] = set()

    def run_once(self) -> list[str]:
        """One pass; the ids of the jobs it requeued."""
        live = {str(w.get("name")) for w in live_workers(self._redis, self._keys)}
        if self._me not in live:
            # Our own heartbeat is missing too: Redis was emptied or is flaky. Judge nobody.
            self._suspects.clear()
            return []
        with self._sessions() as session:
            rows = session.execute(
                select(Job.id, Job.conversation_id, Job.worker).where(
                    Job.status == JobStatus.RUNNING
                )
            ).all()
        orphans = {Orphan(j, c, w) for j, c, w in rows if w not in live}
        confirmed = orphans & self._suspects
        self._suspects = orphans - confirmed
        requeued = []
        for orphan in sorted(confirmed, key=lambda o: o.job_id):
            with self._sessions() as session:
                done, next_job_id = requeue_orphan(session, orphan)
            if not done:
                continue
            requeued.append(orphan.job_id)
            # The next attempt streams afresh; listeners of the lost one have ended (the
            # stream endpoint ends when a running job's worker stops beating).
            self._redis.delete(
                self._keys.job_audio(orphan.job_id), self._keys.job_frames(orphan.job_id)
            )
            log.warning(
                "job %s: worker %s vanished; the turn is queued again", orphan.job_id, orphan.worker
            )
            if next_job_id is not None:
                self._enqueue(next_job_id, orphan.conversation_id)
        return requeued
