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
from shared.jobs.lifecycle import JobPlan, fail_job, release_job, start_job, succeed_job
from shared.jobs.queue import send_job
from shared.logs import job_context
from shared.redis_io.audio_stream import AudioStreamWriter, Outcome, end_stream, stream_maxlen
from shared.redis_io.context import ContextEntry, select_window
from worker.engine.csm import ContextTurn, SamplingParams
from worker.metrics import TurnTiming
from worker.runtime import WorkerRuntime
from worker.silence import SilenceGuard
from worker.turn_audio import TurnAudio
from worker.voice_encoding import voice_reference

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The job was cancelled while it ran."""


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
    try:
        if plan.kind == JobKind.ENCODE:
            codes, flac, pcm_bytes = _encode(rt, plan), None, None
        else:
            codes, flac, pcm_bytes = _generate(rt, plan, timing)
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
    stored, next_job_id = rt.in_sql(
        f"job {job_id}: store",
        lambda s: succeed_job(s, plan, codes=codes, audio_flac=flac, frame_ms=audio.FRAME_MS),
    )
    # After the commit, so a listener that sees the end finds the stored audio.
    _end_audio(rt, plan, "succeeded" if stored else "cancelled", total_bytes=pcm_bytes)
    if stored:
        entry = ContextEntry(
            turn_id=plan.turn_id,
            index=plan.index,
            speaker=plan.speaker,
            text=plan.text,
            codes=codes,
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


def _generate(
    rt: WorkerRuntime, plan: JobPlan, timing: TurnTiming
) -> tuple[np.ndarray, bytes, int]:
    engine = rt.engine
    params = plan.params
    length_ms = params.max_audio_length_ms or rt.settings.default_audio_length_ms
    max_frames = max(1, int(length_ms) // audio.FRAME_MS)
    candidates = rt.in_sql(
        f"job {plan.job_id}: context",
        lambda s: rt.context.candidates(
            s, plan.conversation_id, before_index=plan.index, limit=plan.max_context_turns
        ),
    )
    context = [ContextTurn(speaker=e.speaker, text=e.text, codes=e.codes) for e in candidates]
    # A turn that does not fit even alone gets an empty window; the engine then refuses it
    # with prompt_too_long.
    budget = engine.max_positions - engine.request_cost(plan.speaker, plan.text) - max_frames
    head: list[ContextTurn] = []
    if plan.voice_id is not None and budget >= 0:
        # The bound voice's reference is pinned at the head; the window gets what it leaves.
        reference = voice_reference(rt, plan.voice_id, speaker=plan.speaker)
        reference_cost = engine.turn_cost(reference)
        if reference_cost > budget:
            raise EngineError(
                f"the voice's reference takes {reference_cost} positions and this turn "
                f"{engine.max_positions - budget} (its text and max_audio_length_ms): past the "
                f"model's {engine.max_positions}; use a shorter reference clip or a shorter turn",
                code="voice_reference_too_long",
            )
        budget -= reference_cost
        head = [reference]
    keep = select_window([engine.turn_cost(t) for t in context], budget=budget)
    window = head + list(reversed(context[:keep]))
    if keep < len(context):
        log.info(
            "job %s: context window keeps %d of %d turns (budget %d positions)",
            plan.job_id,
            keep,
            len(context),
            budget,
        )
    most_frames = max(max_frames, rt.settings.max_audio_length_ms // audio.FRAME_MS)
    turn = TurnAudio(
        publisher=rt.publisher,
        stream=AudioStreamWriter(
            rt.redis, rt.keys.job_audio(plan.job_id), maxlen=stream_maxlen(most_frames)
        ),
        guard=SilenceGuard.from_settings(rt.settings, frame_ms=audio.FRAME_MS),
        frames_key=rt.keys.job_frames(plan.job_id),
        cancel_key=rt.keys.job_cancel(plan.job_id),
    )
    sampling = SamplingParams.from_turn(params, max_frames=max_frames)
    engine.generate(window, plan.speaker, plan.text, sampling, on_frame=turn.on_frame)
    if turn.cancelled:
        raise Cancelled()
    codes, pcm = turn.finish()
    timing.first_audio, timing.generated = turn.first_audio_at, time.perf_counter()
    if turn.guard is not None and turn.guard.triggered:
        log.info(
            "job %s: silent tail after %d frames; %d silent frames cut",
            plan.job_id,
            turn.generated,
            turn.guard.dropped_frames,
        )
    if codes.shape[0] == 0:
        raise EngineError(
            "the model ended the turn before producing any audio; try another seed or temperature",
            code="empty_audio",
        )
    # The stored audio is the streamed samples themselves (no second decode).
    return codes, audio.encode(pcm, "flac"), turn.pcm_bytes
