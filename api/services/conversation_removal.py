"""Removing a conversation: its rows in SQL, then its work in flight and its Redis keys."""

from __future__ import annotations

from sqlalchemy import select

from api.resources import ApiState
from shared.db.models import Job, JobStatus
from shared.services.conversations import delete_conversation, get_conversation
from shared.services.jobs import announce_cancel, forget_job_audio


def remove_conversation(state: ApiState, *, owner: str, conversation_id: str) -> None:
    """Delete the owner's conversation (NotFound for another's) in a transaction of its own.

    Once committed, work in flight is stopped (its rows are gone; the worker discards what it
    made), its listeners are ended, and the hot context and finished jobs' audio streams go.
    """
    with state.sessions() as session:
        conversation = get_conversation(session, owner=owner, conversation_id=conversation_id)
        jobs = session.execute(
            select(Job.id, Job.status).where(Job.conversation_id == conversation_id)
        ).all()
        delete_conversation(session, conversation=conversation)
        session.commit()
    for job_id, status in jobs:
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            announce_cancel(state.redis, state.keys, job_id)
        else:
            forget_job_audio(state.redis, state.keys, job_id)
    state.context.delete(conversation_id)
