"""Every change of a job's status, in one place, each checked against the contract's table
(``shared.contract.states.TRANSITIONS``): a change the table forbids raises
:class:`~shared.contract.states.IllegalTransition` and nothing is written.

- the API cancels a job (:func:`cancel_job`): queued | running → cancelled;
- a worker starts it (:func:`start_job`): queued → running;
- its worker stores it (:func:`succeed_job`) or fails it (:func:`fail_job`): running →
  succeeded | failed; cancels it when it was interrupted before any audio
  (:func:`cancel_running`): running → cancelled; or, after a cancel, only hands the
  conversation on (:func:`release_job`);
- recovery puts back a vanished worker's job (:func:`requeue_orphan`): running → queued.

Each is one transaction that begins with the conversation's lock (``shared.jobs.dispatch``) and
re-reads the job under it, so a change is made only from the state it expects: a job started
twice, or stored by an attempt that was taken over, changes nothing. The worker-side changes
commit and end by claiming the conversation's next job; :func:`cancel_job` flushes and leaves
the commit to its caller. A turn carries its job's status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.contract.params import TurnParams
from shared.contract.segments import Segment, segments_from_json, segments_to_json
from shared.contract.states import JobStatus, check_transition
from shared.db.models import (
    Conversation,
    Job,
    JobKind,
    Turn,
    TurnMedia,
    TurnSource,
    TurnVoice,
    utcnow,
)
from shared.errors import Conflict, NotFound
from shared.jobs.dispatch import claim_next, lock_conversation
from shared.mimi_codes import codes_to_bytes
from shared.sentences import split_segments

log = logging.getLogger(__name__)


def move(job: Job, turn: Turn, target: JobStatus) -> None:
    """Set the job's status and its turn's, if the table allows the change (else raise)."""
    check_transition(job.id, job.status, target)
    job.status = turn.status = target


# --- the API: cancel -------------------------------------------------------------------------


def cancel_job(session: Session, *, conversation_id: str, job_id: str) -> tuple[Job, str | None]:
    """Cancel a queued or running job. Returns the job and the next job to enqueue, if any.
    Flushes; the caller commits.

    A running job's worker sees the cancel flag within a frame and discards its work; the
    conversation's next turn may start at once, since a cancelled turn is never context.
    """
    lock_conversation(session, conversation_id)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if JobStatus(job.status).finished:
        raise Conflict(f"job {job_id} is already {job.status}", code="job_finished")
    move(job, job.turn, JobStatus.CANCELLED)
    job.finished_at = utcnow()
    session.flush()
    return job, claim_next(session, conversation_id)


# --- a worker: start, then succeed, fail or release --------------------------------------------


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
    params: TurnParams  # as stored, read once: missing keys take the contract's defaults
    max_context_turns: int
    worker: str  # who runs it, and which attempt: a job taken over by recovery is not ours
    attempt: int
    created_at: datetime  # when the API made the job (for latency metrics)
    voice_id: str | None = None  # the voice pinned at the head of a generated turn's prompt
    segments: tuple[str, ...] = ()  # a generated turn's text, as the segments to speak
    live: bool = False  # its segments come while it is spoken (``shared.redis_io.live_text``)


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
    move(job, turn, JobStatus.RUNNING)
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
        params=TurnParams.from_json(turn.params),
        max_context_turns=conversation.max_context_turns,
        worker=worker,
        attempt=job.attempts,
        created_at=job.created_at,
        voice_id=voice_id,
        segments=tuple(_segment_texts(turn)),
        live=turn.live,
    )
    session.commit()
    return Start(plan, None, conversation_id)


def _segment_texts(turn: Turn) -> list[str]:
    """A generated turn's segments to speak (a turn stored before segments were: cut now)."""
    if turn.source != TurnSource.GENERATED or turn.live:
        return []
    if turn.segments is None:
        return split_segments(turn.text)
    return [segment.text for segment in segments_from_json(turn.segments)]


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
    segments: list[Segment] | None = None,
    text: str | None = None,
) -> tuple[bool, str | None]:
    """Store a turn's codes (and generated audio, its ``segments`` and, for a live turn, its
    whole ``text``) exactly once. Returns (stored, next job)."""
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
    if segments is not None:
        turn.segments = segments_to_json(segments)
    if text is not None:
        turn.text = text
    move(job, turn, JobStatus.SUCCEEDED)
    job.finished_at = utcnow()
    next_job_id = claim_next(session, plan.conversation_id)
    session.commit()
    return True, next_job_id


def fail_job(session: Session, plan: JobPlan, *, code: str, message: str) -> str | None:
    """Mark the job failed with its reason; the conversation goes on. Returns the next job."""
    job = _lock_running(session, plan)
    if job is not None:
        move(job, job.turn, JobStatus.FAILED)
        job.error_code, job.error_message = code, message[:2000]
        job.finished_at = utcnow()
    next_job_id = _claim_if_present(session, plan.conversation_id)
    session.commit()
    return next_job_id


def cancel_running(session: Session, plan: JobPlan, *, text: str | None = None) -> str | None:
    """A running turn interrupted before any audio: cancelled, with nothing stored but its
    ``text`` (a live turn's, as far as it came). Returns the next job."""
    job = _lock_running(session, plan)
    if job is not None:
        move(job, job.turn, JobStatus.CANCELLED)
        job.finished_at = utcnow()
        if text is not None:
            job.turn.text = text
    next_job_id = _claim_if_present(session, plan.conversation_id)
    session.commit()
    return next_job_id


def release_job(session: Session, plan: JobPlan) -> str | None:
    """Hand the conversation on after a job the API cancelled (its row is already final, so
    no status changes here)."""
    _lock_running(session, plan)
    next_job_id = _claim_if_present(session, plan.conversation_id)
    session.commit()
    return next_job_id


def _claim_if_present(session: Session, conversation_id: str) -> str | None:
    if session.get(Conversation, conversation_id) is None:
        return None
    return claim_next(session, conversation_id)


# --- recovery: put back a vanished worker's job ------------------------------------------------


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
    move(job, job.turn, JobStatus.QUEUED)
    job.dispatched = False
    job.worker = None
    job.started_at = None
    next_job_id = claim_next(session, orphan.conversation_id)
    session.commit()
    return True, next_job_id
