"""Stopping a job from the API: a cancel drops the turn; an interrupt (barge-in) keeps what was
already spoken. Used by ``/v1/jobs/{jid}`` and by the live socket."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.resources import ApiState
from api.services.turn_intake import dispatch
from shared.contract.states import CancelFlag, JobStatus
from shared.db.models import Job
from shared.errors import Conflict, NotFound, Unavailable
from shared.jobs.lifecycle import cancel_job
from shared.redis_io.live_text import end_text
from shared.services.jobs import CANCEL_FLAG_TTL_S, announce_cancel

log = logging.getLogger(__name__)


def cancel(state: ApiState, session: Session, *, conversation_id: str, job_id: str) -> Job:
    """Cancel a queued or running job (its turn is dropped, never context); the next turn of
    the conversation is sent at once. Commits."""
    job, next_job_id = cancel_job(session, conversation_id=conversation_id, job_id=job_id)
    session.commit()
    announce_cancel(state.redis, state.keys, job_id)
    if next_job_id is not None:
        dispatch(state, conversation_id=conversation_id, job_id=next_job_id)
    return job


def interrupt(state: ApiState, session: Session, *, conversation_id: str, job_id: str) -> Job:
    """Interrupt a job: a queued one is cancelled (nothing was spoken); a running one stops
    within a frame and its worker stores what was already sent, marked interrupted, as the
    turn (the next turn waits for it, so it hears it). Commits.

    Raises:
        Conflict: The job has finished (``job_finished``).
        Unavailable: Redis is away, so a running job cannot be told (``redis_unavailable``).
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if JobStatus(job.status).finished:
        raise Conflict(f"job {job_id} is already {job.status}", code="job_finished")
    if job.status == JobStatus.QUEUED:  # (one that starts meanwhile has spoken nothing yet)
        return cancel(state, session, conversation_id=conversation_id, job_id=job_id)
    session.commit()
    try:
        pipe = state.redis.pipeline(transaction=False)
        pipe.set(state.keys.job_cancel(job_id), CancelFlag.INTERRUPT, ex=CANCEL_FLAG_TTL_S)
        end_text(pipe, state.keys.job_text(job_id))  # a live turn takes no more text
        pipe.execute()
    except RedisError as exc:
        raise Unavailable(
            f"job {job_id} could not be interrupted: Redis is unavailable ({exc})",
            code="redis_unavailable",
        ) from exc
    log.info("job %s: interrupted", job_id)
    session.refresh(job)
    return job
