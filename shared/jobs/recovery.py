"""Recovery: SQL is the truth, and every accepted turn is spoken exactly once.

Three things can leave an accepted turn stranded, and every live worker's pass after each
heartbeat repairs all three:

- **its worker vanished** (killed, crashed, its machine gone): see below;
- **Redis lost its data** (restarted without persistence), **or another server took its
  place** (a Sentinel failover promoted a replica that had not received the newest writes, or
  a restart loaded an older snapshot): the broker's messages are gone with it, or some of them.
  Redis keeps a marker key (``RedisKeys.epoch``) holding the run id of the server that holds
  it; the pass that finds it missing or naming another server sets it to the current one and
  re-sends every job SQL says is in the broker. A duplicate message is harmless: a job starts
  only from ``queued`` under its conversation's lock, so the second copy is skipped;
- **an enqueue failed** (the broker was away when the API or a worker sent a job): the claim
  was released, so the conversation's next job waits undispatched with nothing of its
  conversation in the broker or running. The pass claims and sends it;
- **a worker died as it took a message**: kombu's Redis transport pops a message from the
  queue and only then records it as unacknowledged, so a worker killed between the two takes
  the message with it (and one killed after it leaves the message in the unacked set until the
  hour-long visibility timeout). SQL says the job is in the broker; it is in no queue and no
  live worker holds it. A job found so on two passes in a row is sent again.

Running jobs whose worker vanished (or that their worker no longer holds):

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

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job, JobStatus
from shared.errors import NotFound
from shared.jobs.dispatch import (
    claim_next,
    dispatched_jobs,
    lock_conversation,
    stalled_conversations,
)
from shared.jobs.lifecycle import Orphan, requeue_orphan
from shared.jobs.queue import JobSender, queued_job_ids, send_or_release
from shared.redis_io.heartbeats import live_beats
from shared.redis_io.keys import RedisKeys
from shared.services.jobs import forget_job_audio

log = logging.getLogger(__name__)

# Set the epoch marker (KEYS[1]) to this server's run id (ARGV[1]); 1 when it was missing or
# named another server, 0 when it already named this one. Atomic: one pass wins.
_MARK_SERVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class OrphanReconciler:
    """Finds and requeues orphaned jobs, re-sends what a lost broker dropped, and sends what a
    failed enqueue left waiting; one per worker process, run after each heartbeat."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        reads: sessionmaker[Session] | None = None,
        redis: Redis,
        keys: RedisKeys,
        me: str,
        enqueue: JobSender,
        broker_queue: str,
    ) -> None:
        """``me`` is this worker's name; ``enqueue(job_id, conversation_id)`` sends a job
        (``shared.jobs.queue.job_sender``; tests pass one that records).
        ``reads`` (default ``sessions``) serves the pass's look-ups; on SQLite a read-only
        factory keeps them from waiting for the write lock."""
        self._sessions = sessions
        self._reads = reads or sessions
        self._redis = redis
        self._keys = keys
        self._me = me
        self._enqueue = enqueue
        self._suspects: set[Orphan] = set()
        self._broker_queue = broker_queue
        # Dispatched jobs seen in no queue and held by no worker on the last pass.
        self._unseen: set[tuple[str, str]] = set()

    def run_once(self) -> list[str]:
        """One pass; the ids of the running jobs it requeued (orphans)."""
        self.resend_if_redis_lost()
        requeued = self.requeue_orphans()
        self.send_stalled()
        self.resend_lost_messages()
        return requeued

    def resend_if_redis_lost(self) -> list[str]:
        """When Redis lost its data (no epoch marker) or is another server than the one that
        set the marker (a failover, a restart), re-send every job SQL has in the broker. The
        ids re-sent; empty when the same Redis kept its data (or another worker got there
        first)."""
        server = str(self._redis.info("server")["run_id"])
        if not self._redis.eval(_MARK_SERVER, 1, self._keys.epoch(), server):
            return []
        with self._reads() as session:
            jobs = dispatched_jobs(session)
        if jobs:
            log.warning(
                "Redis lost its data, or another server took its place (a failover, a restart), "
                "or this is its first use: re-sending the %d jobs SQL says are queued in the "
                "broker",
                len(jobs),
            )
        for job_id, conversation_id in jobs:
            self._send(job_id, conversation_id)
        return [job_id for job_id, _ in jobs]

    def send_stalled(self) -> list[str]:
        """Claim and send the next job of every conversation a failed enqueue left waiting."""
        with self._reads() as session:
            stalled = stalled_conversations(session)
        sent = []
        for conversation_id in stalled:
            with self._sessions() as session:
                try:
                    lock_conversation(session, conversation_id)
                except NotFound:
                    continue
                job_id = claim_next(session, conversation_id)
                session.commit()
            if job_id is not None:
                log.warning("job %s was waiting undispatched; sending it now", job_id)
                if self._send(job_id, conversation_id):
                    sent.append(job_id)
        return sent

    def resend_lost_messages(self) -> list[str]:
        """Send again every job SQL says is in the broker that is neither in the turn queue nor
        held by a live worker, on two passes in a row. A message taken an instant before the
        first look is held (or running) by the second; a needless copy would be harmless."""
        with self._reads() as session:
            dispatched = dispatched_jobs(session)
        workers = live_beats(self._redis, self._keys)
        if self._me not in {w.label for w in workers} or not dispatched:
            self._unseen.clear()  # Redis emptied or flaky (judge nobody), or nothing to judge
            return []
        held = {j for w in workers for j in w.held}
        candidates = {(j, c) for j, c in dispatched if j not in held}
        if candidates:
            queued = queued_job_ids(self._redis, self._broker_queue)
            candidates = {(j, c) for j, c in candidates if j not in queued}
        confirmed = candidates & self._unseen
        self._unseen = candidates - confirmed
        sent = []
        for job_id, conversation_id in sorted(confirmed):
            log.warning(
                "job %s is dispatched in SQL but in no queue and held by no worker (a worker "
                "died as it took its message); sending it again",
                job_id,
            )
            if self._send(job_id, conversation_id):
                sent.append(job_id)
        return sent

    def _send(self, job_id: str, conversation_id: str) -> bool:
        return send_or_release(
            self._sessions, self._enqueue, job_id=job_id, conversation_id=conversation_id
        )

    def requeue_orphans(self) -> list[str]:
        """Requeue running jobs whose worker has been missing on two passes in a row."""
        # SQL first, then Redis: a job that started after this read is not judged, and the
        # worker of every job read here was announced (heartbeat) before its job ran.
        with self._reads() as session:
            rows = session.execute(
                select(Job.id, Job.conversation_id, Job.worker).where(
                    Job.status == JobStatus.RUNNING
                )
            ).all()
        workers = live_beats(self._redis, self._keys)
        live = {w.label for w in workers}
        # Who holds what, for heartbeats that list their jobs.
        held = {w.label: w.held for w in workers if w.jobs is not None}
        if self._me not in live:
            # Our own heartbeat is missing too: Redis was emptied or is flaky. Judge nobody.
            self._suspects.clear()
            return []
        # A running job is orphaned when its worker is gone, or alive but no longer holding it
        # (it gave up on the job during an outage). Heartbeats list held jobs before they run.
        orphans = {
            Orphan(j, c, w) for j, c, w in rows if w not in live or (w in held and j not in held[w])
        }
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
            forget_job_audio(self._redis, self._keys, orphan.job_id)
            log.warning(
                "job %s: worker %s vanished; the turn is queued again", orphan.job_id, orphan.worker
            )
            if next_job_id is not None:
                self._send(next_job_id, orphan.conversation_id)
        return requeued
