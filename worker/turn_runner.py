"""Running one job: build the context window, speak (or encode), store, hand off.

The Celery task is a thin wrapper around :func:`run_job`; tests and benchmarks call it too.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from shared.audio import containers as audio
from shared.db.models import JobKind, TurnMedia
from shared.errors import EngineError
from shared.jobs.lifecycle import (
    JobPlan,
    cancel_running,
    fail_job,
    release_job,
    start_job,
    succeed_job,
)
from shared.jobs.queue import send_job
from shared.logs import job_context
from shared.redis_io.audio_stream import Outcome, end_stream
from shared.redis_io.context import ContextEntry, spoken_segments
from worker.metrics import TurnTiming
from worker.runtime import WorkerRuntime
from worker.speaking import Cancelled, Spoken, speak

log = logging.getLogger(__name__)


def run_job(rt: WorkerRuntime, job_id: str, conversation_id: str | None = None) -> None:
    """Run a job end to end. Engine failures fail the job (with its reason), never the worker.

    While the job is held, the worker's heartbeat lists it. A database outage is waited out
    (``PARLEY_DB_RETRY_S``) with the job in hand; past that the job is let go, and recovery
    gives it to a worker again once the database is back.
    """
    rt.held.add(job_id)
    try:
        with job_context(job_id, conversation_id):  # every log line of the job names it
            _run_held(rt, job_id, conversation_id)
    finally:
        rt.held.discard(job_id)


def _run_held(rt: WorkerRuntime, job_id: str, conversation_id: str | None) -> None:
    start = rt.in_sql(
        f"job {job_id}: start",
        lambda session: start_job(
            session,
            job_id=job_id,
            conversation_id=conversation_id,
            worker=rt.name,
            model=rt.model_label,
            test_model=rt.engine.is_test_model,
        ),
    )
    if start.plan is None:
        if start.conversation_id is not None:
            _enqueue(rt, start.next_job_id, start.conversation_id)
        return
    plan = start.plan
    timing = TurnTiming()
    spoken: Spoken | None = None
    try:
        if plan.kind == JobKind.ENCODE:
            codes, flac, pcm_bytes = _encode(rt, plan), None, None
        else:
            spoken = speak(rt, plan, timing)
            # The stored audio is the streamed samples themselves (no second decode).
            codes, flac, pcm_bytes = (
                spoken.codes,
                audio.encode(spoken.pcm, "flac"),
                spoken.pcm_bytes,
            )
    except Cancelled:
        next_job_id = rt.in_sql(f"job {job_id}: release", lambda s: release_job(s, plan))
        _end_audio(rt, plan, "cancelled")
        _enqueue(rt, next_job_id, plan.conversation_id)
        return
    except Exception as exc:  # the engine boundary: any failure fails this job, not the worker
        log.exception("job %s failed", plan.job_id)
        code = exc.code if isinstance(exc, EngineError) else "engine_error"
        message = f"{exc}"
        next_job_id = rt.in_sql(
            f"job {job_id}: fail",
            lambda s: fail_job(s, plan, code=code, message=message),
        )
        _end_audio(rt, plan, "failed")
        _enqueue(rt, next_job_id, plan.conversation_id)
        return
    # A live turn's text came while it was spoken: the worker stores what came.
    live_text = spoken.text if spoken is not None and plan.live else None
    if spoken is not None and spoken.codes.shape[0] == 0:  # interrupted before any audio
        next_job_id = rt.in_sql(
            f"job {job_id}: cancel", lambda s: cancel_running(s, plan, text=live_text)
        )
        _end_audio(rt, plan, "cancelled")
        _enqueue(rt, next_job_id, plan.conversation_id)
        return
    stored, next_job_id = rt.in_sql(
        f"job {job_id}: store",
        lambda s: succeed_job(
            s,
            plan,
            codes=codes,
            audio_flac=flac,
            frame_ms=audio.FRAME_MS,
            segments=spoken.segments if spoken else None,
            text=live_text,
        ),
    )
    # After the commit, so a listener that sees the end finds the stored audio.
    _end_audio(rt, plan, "succeeded" if stored else "cancelled", total_bytes=pcm_bytes)
    if stored:
        entry = ContextEntry(
            turn_id=plan.turn_id,
            index=plan.index,
            speaker=plan.speaker,
            text=live_text or plan.text,
            codes=codes,
            segments=spoken_segments(spoken.segments) if spoken else (),
        )
        rt.context.put(plan.conversation_id, entry, keep=max(plan.max_context_turns, 1))
        if plan.kind == JobKind.GENERATE:
            audio_s = codes.shape[0] * audio.FRAME_MS / 1000
            rt.metrics.record_turn(created_at=plan.created_at, timing=timing, audio_s=audio_s)
        log.info(
            "job %s (%s, turn %d) done: %d frames in %.0f ms",
            plan.job_id,
            plan.kind,
            plan.index,
            codes.shape[0],
            1000 * (time.perf_counter() - timing.began),
        )
    _enqueue(rt, next_job_id, plan.conversation_id)


def _enqueue(rt: WorkerRuntime, job_id: str | None, conversation_id: str) -> None:
    """Send the conversation's next job; a broker that is away leaves it to recovery."""
    send_job(rt.sessions, rt.celery, rt.settings, job_id=job_id, conversation_id=conversation_id)


def _end_audio(
    rt: WorkerRuntime, plan: JobPlan, outcome: Outcome, *, total_bytes: int | None = None
) -> None:
    """Write a generated job's terminal stream entry, once its outcome is committed."""
    if plan.kind == JobKind.GENERATE:
        end_stream(rt.redis, rt.keys.job_audio(plan.job_id), outcome, total_bytes=total_bytes)


def _encode(rt: WorkerRuntime, plan: JobPlan) -> np.ndarray:
    with rt.sessions() as session:
        media = session.get(TurnMedia, plan.turn_id)
        flac = media.audio_flac if media is not None else None
    if flac is None:
        raise EngineError(f"provided turn {plan.turn_id} has no stored audio")
    return rt.engine.encode(audio.decode_flac(flac))
