"""Strict per-conversation order without idle waiting.

A conversation has at most one job in the broker (queued and dispatched) or running. Whoever
changes a conversation's jobs — the API posting or cancelling a turn, a worker finishing one —
calls :func:`claim_next` inside a transaction that first locks the conversation's row, then,
after the commit, enqueues the job it returns. The lock serialises those hand-offs, so two
posts and a finishing worker can never both dispatch.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.models import Conversation, Job, JobStatus, Turn


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
