"""Strict per-conversation order without idle waiting.

A conversation has at most one job in the broker (queued and dispatched) or running. Whoever
changes a conversation's jobs — the API posting or cancelling a turn, a worker finishing one —
calls :func:`claim_next` inside a transaction that first locks the conversation's row, then,
after the commit, enqueues the job it returns. The lock serialises those hand-offs, so two
posts and a finishing worker can never both dispatch.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Job, JobStatus, Turn
from shared.errors import NotFound


def lock_conversation(session: Session, conversation_id: str) -> None:
    """Take the conversation's write lock for the rest of the transaction.

    An UPDATE of its row: a row lock on PostgreSQL, the database write lock on SQLite. Call it
    first in the transaction (SQLite cannot upgrade a read snapshot that went stale).
    """
    result = session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id)
        .values(next_index=Conversation.next_index)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"conversation {conversation_id} not found")


def claim_next(session: Session, conversation_id: str) -> str | None:
    """Mark the conversation's next job dispatched and return its id, or None.

    None when a job of the conversation is already in the broker or running, or none waits.
    The caller holds the conversation lock and enqueues the id after committing.
    """
    active = session.scalar(
        select(Job.id)
        .where(
            Job.conversation_id == conversation_id,
            or_(
                Job.status == JobStatus.RUNNING,
                and_(Job.status == JobStatus.QUEUED, Job.dispatched.is_(True)),
            ),
        )
        .limit(1)
    )
    if active is not None:
        return None
    job = session.scalar(
        select(Job)
        .join(Turn, Turn.id == Job.turn_id)
        .where(
            Job.conversation_id == conversation_id,
            Job.status == JobStatus.QUEUED,
            Job.dispatched.is_(False),
        )
        .order_by(Turn.index)
        .limit(1)
    )
    if job is None:
        return None
    job.dispatched = True
    session.flush()
    return job.id


def release_claim(session: Session, *, conversation_id: str, job_id: str) -> None:
    """Undo a claim whose enqueue failed (the broker was away): the job waits undispatched, and
    the recovery pass (``shared.jobs.recovery``) claims and sends it again once the broker is
    back."""
    try:
        lock_conversation(session, conversation_id)
    except NotFound:
        return
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None and job.status == JobStatus.QUEUED:
        job.dispatched = False
    session.commit()


def stalled_conversations(session: Session) -> list[str]:
    """Conversations whose next job waits undispatched while none of theirs is in the broker or
    running: only a failed enqueue (or a lost broker) leaves a conversation so."""
    other = Job.__table__.alias("other")
    busy = exists().where(
        other.c.conversation_id == Job.conversation_id,
        or_(
            other.c.status == JobStatus.RUNNING,
            and_(other.c.status == JobStatus.QUEUED, other.c.dispatched.is_(True)),
        ),
    )
    return list(
        session.scalars(
            select(Job.conversation_id)
            .where(Job.status == JobStatus.QUEUED, Job.dispatched.is_(False), ~busy)
            .distinct()
        )
    )


def dispatched_jobs(session: Session) -> list[tuple[str, str]]:
    """(job id, conversation id) of every job that should be in the broker now."""
    rows = session.execute(
        select(Job.id, Job.conversation_id).where(
            Job.status == JobStatus.QUEUED, Job.dispatched.is_(True)
        )
    ).all()
    return [(r[0], r[1]) for r in rows]
