"""Quotas checked inside the transaction that would exceed them, so a refusal writes nothing.

Checks of one owner are serialised: on SQLite every writing transaction already holds the
database write lock (``BEGIN IMMEDIATE``); on PostgreSQL :func:`lock_owner` takes a transaction
advisory lock on the owner, so two concurrent posts of one key cannot both pass a count that
has room for one. The server-wide job count takes no lock: under concurrent posts it may run
over by the posts in flight at that moment, which is enough for backpressure.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Job, JobStatus
from shared.errors import Conflict, TooManyRequests
from shared.settings import Settings

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def lock_owner(session: Session, owner: str) -> None:
    """Serialise the owner's quota checks for the rest of the transaction (PostgreSQL; SQLite
    writers are serialised already)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"parley.owner:{owner}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)  # the lock's bigint id
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def check_conversation_quota(session: Session, settings: Settings, *, owner: str) -> None:
    """Refuse one conversation more than ``max_conversations_per_key`` (409)."""
    lock_owner(session, owner)
    limit = settings.max_conversations_per_key
    count = session.scalar(
        select(func.count()).select_from(Conversation).where(Conversation.owner == owner)
    )
    if (count or 0) >= limit:
        raise Conflict(
            f"this key has {count} conversations; the limit is {limit} "
            "(max_conversations_per_key): delete one to make another",
            code="conversation_limit",
        )


def check_job_quota(session: Session, settings: Settings, *, owner: str) -> None:
    """Refuse a new job (a turn) when the owner, or the whole server, has too many queued or
    running (429 with Retry-After)."""
    lock_owner(session, owner)
    limit = settings.max_queued_turns_per_key
    mine = session.scalar(
        select(func.count())
        .select_from(Job)
        .join(Conversation, Conversation.id == Job.conversation_id)
        .where(Conversation.owner == owner, Job.status.in_(ACTIVE))
    )
    if (mine or 0) >= limit:
        raise TooManyRequests(
            f"this key has {mine} turns queued or running; the limit is {limit} "
            "(max_queued_turns_per_key)",
            code="queue_full",
            retry_after_s=settings.retry_after_s,
        )
    limit = settings.max_queued_turns
    everyone = session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE)))
    if (everyone or 0) >= limit:
        raise TooManyRequests(
            f"the server has {everyone} turns queued or running; the limit is {limit} "
            "(max_queued_turns)",
            code="server_busy",
            retry_after_s=settings.retry_after_s,
        )
