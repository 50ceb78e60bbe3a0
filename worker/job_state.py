"""A job's SQL transitions on the worker side: start, succeed, fail. Each is one transaction
that begins with the conversation's lock and ends by claiming the conversation's next job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import (
    Conversation,
    Job,
    JobKind,
    JobStatus,
    Turn,
    TurnMedia,
    TurnSource,
    TurnVoice,
    utcnow,
)
from shared.errors import NotFound
from shared.jobs.dispatch import claim_next, lock_conversation
from shared.mimi_codes import codes_to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """Everything a job needs from SQL, read once when it starts."""

    job_id: str
    kind: str
    conversation_id: str
    turn_id: str
    index: int
    speaker: int
    text: str
    params: dict[str, Any]
    max_context_turns: int
    worker: str  # who runs it, and which attempt: a job taken over by recovery is not ours
    attempt: int
    created_at: datetime  # when the API made the job (for latency metrics)
    voice_id: str | None = None  # the voice pinned at the head of a generated turn's prompt


@dataclass(frozen=True)
class Start:
    plan: JobPlan | None  # None: nothing to run (cancelled or deleted)
    next_job_id: str | None
    conversation_id: str | None = None


def start_job(
    session: Session,
    *,
    job_id: str,
    conversation_id: str | None = None,
    worker: str,
    model: str,
    test_model: bool,
) -> Start:
    """Mark a queued job running, in one transaction under its conversation's lock.

    ``conversation_id`` (sent with the task) saves a lookup; without it the job row says.
    """
    if conversation_id is None:
        found = session.get(Job, job_id)
        if found is None:
            log.info("job %s is gone (its conversation was deleted); skipping", job_id)
            return Start(None, None)
        conversation_id = found.conversation_id
        session.commit()
    try:
        lock_conversation(session, conversation_id)
    except NotFound:
        log.info("job %s: its conversation is gone; skipping", job_id)
        return Start(None, None)
    # One query for the job, its turn and its conversation (fresh: we hold the lock now).
    row = session.execute(
        select(Job, Turn, Conversation)
        .join(Turn, Turn.id == Job.turn_id)
        .join(Conversation, Conversation.id == Job.conversation_id)
        .where(Job.id == job_id, Job.conversation_id == conversation_id)
        .execution_options(populate_existing=True)
    ).first()
    if row is None or row[0].status != JobStatus.QUEUED:
        status = row[0].status if row else "deleted"
        log.info("job %s is %s; skipping", job_id, status)
        next_job_id = claim_next(session, conversation_id)
        session.commit()
        return Start(None, next_job_id, conversation_id)
    job, turn, conversation = row
    job.status = turn.status = JobStatus.RUNNING
    job.started_at = utcnow()
    job.attempts += 1
    job.worker, job.model, job.test_model = worker, model, test_model
    voice_id = (
        session.scalar(select(TurnVoice.voice_id).where(TurnVoice.turn_id == turn.id))
        if job.kind == JobKind.GENERATE
        else None
    )
    plan = JobPlan(
        job_id=job.id,
        kind=job.kind,
        conversation_id=conversation_id,
        turn_id=turn.id,
        index=turn.index,
        speaker=turn.speaker,
        text=turn.text,
        params=dict(turn.params or {}),
        max_context_turns=conversation.max_context_turns,
        worker=worker,
        attempt=job.attempts,
        created_at=job.created_at,
        voice_id=voice_id,
    )
    session.commit()
    return Start(plan, None, conversation_id)


def _lock_running(session: Session, plan: JobPlan) -> Job | None:
    """Lock the conversation and return the job if it is still ours to finish."""
    try:
        lock_conversation(session, plan.conversation_id)
    except NotFound:
        return None
    job = session.get(Job, plan.job_id, populate_existing=True)
    if job is None:
        return None
    if job.attempts != plan.attempt or (
        job.status == JobStatus.RUNNING and job.worker != plan.worker
    ):
        # Requeued while this attempt was away (a frozen or cut-off worker): another attempt
        # has it, or has already finished it.
        log.warning(
            "job %s was taken over (now attempt %d on %s); discarding attempt %d",
            plan.job_id,
            job.attempts,
            job.worker,
            plan.attempt,
        )
        return None
    if job.status == JobStatus.QUEUED:
        log.warning(
            "job %s was put back in the queue (this worker was judged gone); discarding attempt %d",
            plan.job_id,
            plan.attempt,
        )
        return None
    if job.status != JobStatus.RUNNING:
        log.info("job %s was cancelled while running; discarding its output", plan.job_id)
        return None
    return job


def succeed_job(
    session: Session,
    plan: JobPlan,
    *,
    codes: np.ndarray,
    audio_flac: bytes | None,
    frame_ms: int,
) -> tuple[bool, str | None]:
    """Store a turn's codes (and generated audio) exactly once. Returns (stored, next job)."""
    job = _lock_running(session, plan)
    if job is None:
        next_job_id = _claim_if_present(session, plan.conversation_id)
        session.commit()
        return False, next_job_id
    turn = job.turn
    media = session.get(TurnMedia, turn.id)
    if media is None:
        media = TurnMedia(turn_id=turn.id)
        session.add(media)
    media.codes = codes_to_bytes(codes)
    media.n_q = int(codes.shape[1])
    if audio_flac is not None:
        media.audio_flac = audio_flac
    frames = int(codes.shape[0])
    turn.frames = job.frames = frames
    if turn.source == TurnSource.GENERATED:
        turn.duration_ms = frames * frame_ms
    job.status = turn.status = JobStatus.SUCCEEDED
    job.finished_at = utcnow()
    next_job_id = claim_next(session, plan.conversation_id)
    session.commit()
    return True, next_job_id


def fail_job(session: Session, plan: JobPlan, *, code: str, message: str) -> str | None:
    """Mark the job failed with its reason; the conversation goes on. Returns the next job."""
    job = _lock_running(session, plan)
    if job is not None:
        job.status = job.turn.status = JobStatus.FAILED
        job.error_code, job.error_message = code, message[:2000]
        job.finished_at = utcnow()
    next_job_id = _claim_if_present(session, plan.conversation_id)
    session.commit()
    return next_job_id


def release_job(session: Session, plan: JobPlan) -> str | None:
    """Hand the conversation on after a job the API cancelled (its row is already final)."""
    _lock_running(session, plan)
    next_job_id = _claim_if_present(session, plan.conversation_id)
    session.commit()
    return next_job_id


def _claim_if_present(session: Session, conversation_id: str) -> str | None:
    if session.get(Conversation, conversation_id) is None:
        return None
    return claim_next(session, conversation_id)
