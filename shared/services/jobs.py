"""Job services the API needs: look up a job, and tell Redis about a cancel (the cancel
itself is ``shared.jobs.lifecycle.cancel_job``). Lookups never commit."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from shared.contract.states import CancelFlag
from shared.db.models import Conversation, Job, is_id
from shared.errors import NotFound
from shared.redis_io.audio_stream import end_stream
from shared.redis_io.keys import RedisKeys

log = logging.getLogger(__name__)

CANCEL_FLAG_TTL_S = 3600


def get_job(session: Session, *, owner: str, job_id: str) -> Job:
    """The caller's job; NotFound for a missing one and for another owner's."""
    job = session.get(Job, job_id) if is_id(job_id) else None
    if job is None:
        raise NotFound(f"job {job_id} not found")
    conversation = session.get(Conversation, job.conversation_id)
    if conversation is None or conversation.owner != owner:
        raise NotFound(f"job {job_id} not found")
    return job


def announce_cancel(redis: Redis, keys: RedisKeys, job_id: str) -> None:
    """Tell Redis about a committed cancel: the flag a running job's worker checks every frame,
    and the terminal entry of the job's audio stream, so a listener waiting on a job that never
    started ends at once (a running job's worker writes one too when it stops).

    Best effort: SQL holds the cancel, so with Redis away a running job's worker still discards
    its turn when it tries to store it (it only cannot stop early)."""
    try:
        redis.set(keys.job_cancel(job_id), CancelFlag.CANCEL, ex=CANCEL_FLAG_TTL_S)
    except RedisError as exc:
        log.warning("job %s: cancel flag not set (%s); its worker discards the turn", job_id, exc)
        return
    end_stream(redis, keys.job_audio(job_id), "cancelled")


def forget_job_audio(redis: Redis, keys: RedisKeys, job_id: str) -> None:
    """Drop a job's live audio stream and progress (best effort: both expire by themselves)."""
    try:
        redis.delete(keys.job_audio(job_id), keys.job_frames(job_id))
    except RedisError as exc:
        log.warning("job %s: live audio keys not dropped: %s", job_id, exc)
