"""Speaking a generated turn, segment by segment.

A turn's text comes as segments (``shared.sentences``): from the stored turn, or, for a live
turn, from its Redis text stream as the client sends it (``shared.redis_io.live_text``). Each
segment is one generation whose prompt holds the conversation's newest turns and this turn's
segments so far (the voice's reference pinned first), as many as fit beside the segment's text
and audio budget in the model's positions. All segments stream into the turn's one audio
stream, back to back, each followed by a segment mark; the stored turn is their concatenation.

A cancel drops the turn (:class:`Cancelled`); an interrupt (barge-in) stops it and keeps what
was sent: the segment being spoken is ``interrupted``, the rest ``dropped``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from shared.audio import containers as audio
from shared.contract.segments import Segment, SegmentStatus
from shared.errors import EngineError
from shared.jobs.lifecycle import JobPlan
from shared.redis_io.audio_stream import AudioStreamWriter, stream_maxlen
from shared.redis_io.context import ContextEntry, select_window
from shared.redis_io.live_text import TextTimeout, end_text, read_segments
from shared.sentences import BUDGET_FLOOR_MS, BUDGET_MS_PER_CHAR, segment_budget_ms
from shared.settings import Settings
from worker.engine.csm import ContextTurn, SamplingParams
from worker.metrics import TurnTiming
from worker.runtime import WorkerRuntime
from worker.silence import SilenceGuard
from worker.turn_audio import TurnAudio
from worker.voice_encoding import voice_reference

log = logging.getLogger(__name__)

SEED_MODULUS = 2**32


class Cancelled(Exception):
    """The job was cancelled while it ran."""


@dataclass(frozen=True)
class Spoken:
    """A generated turn as spoken: its codes and int16 samples (exactly what was streamed),
    its segments, and its whole text (what the client sent, for a live turn)."""

    codes: np.ndarray
    pcm: np.ndarray
    segments: list[Segment]
    text: str
    pcm_bytes: int


def segment_frames(text: str, plan: JobPlan, settings: Settings) -> int:
    """A segment's most frames: the turn's ``max_audio_length_ms`` when given, else a budget
    that follows its text, capped by the server's ``max_audio_length_ms``."""
    budget_ms = plan.params.max_audio_length_ms or segment_budget_ms(
        text, cap_ms=settings.max_audio_length_ms
    )
    return max(1, budget_ms // audio.FRAME_MS)


def most_stream_entries(plan: JobPlan, settings: Settings) -> int:
    """A bound on the turn's audio stream entries (chunks and marks), for its cap."""
    if plan.live:  # unknown text: the most the longest text could need, at one segment a word
        worst_ms = settings.max_text_chars * BUDGET_MS_PER_CHAR
        worst_ms += (settings.max_text_chars // 2 + 1) * BUDGET_FLOOR_MS
        return stream_maxlen(worst_ms // audio.FRAME_MS)
    frames = sum(segment_frames(text, plan, settings) for text in plan.segments)
    return stream_maxlen(frames + len(plan.segments))


def speak(rt: WorkerRuntime, plan: JobPlan, timing: TurnTiming) -> Spoken:
    """Speak the turn's segments, streaming each frame as it comes.

    Raises:
        Cancelled: The job was cancelled (not interrupted) while it ran.
        EngineError: Generation failed, or no segment gave any audio.
    """
    engine = rt.engine
    earlier = _earlier_pieces(rt, plan)
    reference = voice_reference(rt, plan.voice_id, speaker=plan.speaker) if plan.voice_id else None
    turn = TurnAudio(
        publisher=rt.publisher,
        stream=AudioStreamWriter(
            rt.redis, rt.keys.job_audio(plan.job_id), maxlen=most_stream_entries(plan, rt.settings)
        ),
        guard=None,
        frames_key=rt.keys.job_frames(plan.job_id),
        cancel_key=rt.keys.job_cancel(plan.job_id),
    )
    segments: list[Segment] = []
    texts: list[str] = []
    own: list[ContextTurn] = []  # this turn's spoken segments, oldest first
    for index, text in enumerate(_segment_texts(rt, plan, turn)):
        texts.append(text)
        if turn.cancelled:  # interrupted before this segment began
            segments.append(Segment(text, 0, SegmentStatus.DROPPED))
            continue
        max_frames = segment_frames(text, plan, rt.settings)
        window = _window(rt, plan, reference, own[::-1] + earlier, text, max_frames)
        guard = SilenceGuard.from_settings(rt.settings, frame_ms=audio.FRAME_MS)
        turn.start_segment(guard)
        kept, generated = turn.kept, turn.generated
        seed = None if plan.params.seed is None else (plan.params.seed + index) % SEED_MODULUS
        sampling = replace(SamplingParams.from_turn(plan.params, max_frames=max_frames), seed=seed)
        engine.generate(window, plan.speaker, text, sampling, on_frame=turn.on_frame)
        if turn.cancelled and not turn.interrupted:
            raise Cancelled()
        if turn.cancelled:
            status = SegmentStatus.INTERRUPTED if turn.kept > kept else SegmentStatus.DROPPED
        else:
            turn.end_segment()
            ran_out = turn.generated - generated >= max_frames
            silent = guard is not None and guard.triggered
            status = SegmentStatus.TRUNCATED if ran_out and not silent else SegmentStatus.DONE
            if silent:
                log.info(
                    "job %s: segment %d: silent tail after %d frames; %d silent frames cut",
                    plan.job_id,
                    index,
                    turn.generated - generated,
                    guard.dropped_frames if guard else 0,
                )
        segment = Segment(text, turn.kept - kept, status)
        segments.append(segment)
        if segment.spoken:
            own.append(ContextTurn(plan.speaker, text, turn.codes(kept, turn.kept)))
        if turn.streaming and status is not SegmentStatus.DROPPED:
            turn.mark_segment(index, segment)
    if turn.cancelled and not turn.interrupted:
        raise Cancelled()
    codes, pcm = turn.result()
    timing.first_audio, timing.generated = turn.first_audio_at, time.perf_counter()
    if not texts and not turn.cancelled:
        raise EngineError(
            f"the live turn's text did not complete a sentence within "
            f"{rt.settings.live_text_idle_s:g} s (live_text_idle_s)",
            code="live_text_idle",
        )
    if codes.shape[0] == 0 and not turn.interrupted:
        raise EngineError(
            "the model ended the turn before producing any audio; try another seed or temperature",
            code="empty_audio",
        )
    return Spoken(codes, pcm, segments, " ".join(texts), turn.pcm_bytes)


def _segment_texts(rt: WorkerRuntime, plan: JobPlan, turn: TurnAudio) -> Iterator[str]:
    """The segments to speak: the stored turn's, or a live turn's as they come. A live turn
    whose client sends nothing for ``live_text_idle_s`` ends there."""
    if not plan.live:
        yield from plan.segments
        return
    key = rt.keys.job_text(plan.job_id)
    cancel_key = rt.keys.job_cancel(plan.job_id)

    def stop() -> bool:  # cancelled or interrupted: no more text is waited for
        if not turn.cancelled:
            turn.cancel_seen(rt.redis.get(cancel_key))  # type: ignore[arg-type]
        return turn.cancelled

    try:
        yield from read_segments(rt.redis, key, stop=stop, idle_s=rt.settings.live_text_idle_s)
    except TextTimeout as exc:
        log.warning("job %s: live turn ended: %s", plan.job_id, exc)
        end_text(rt.redis, key)  # text that comes later is refused, not lost
    stop()  # an interrupt also ends the text: tell the two apart


def _earlier_pieces(rt: WorkerRuntime, plan: JobPlan) -> list[ContextTurn]:
    """The conversation's turns before this one, as prompt pieces, newest first (a turn spoken
    in segments gives one piece per segment)."""
    entries: list[ContextEntry] = rt.in_sql(
        f"job {plan.job_id}: context",
        lambda s: rt.context.candidates(
            s, plan.conversation_id, before_index=plan.index, limit=plan.max_context_turns
        ),
        read_only=True,  # a read: it need not queue for SQLite's write lock behind the writers
    )
    return [
        ContextTurn(speaker=entry.speaker, text=text, codes=codes)
        for entry in entries
        for text, codes in reversed(entry.pieces())
    ]


def _window(
    rt: WorkerRuntime,
    plan: JobPlan,
    reference: ContextTurn | None,
    pieces_newest_first: list[ContextTurn],
    text: str,
    max_frames: int,
) -> list[ContextTurn]:
    """The prompt's context for one segment: the voice's reference first, then the newest
    pieces that fit beside the segment's text and budget, oldest first. A segment that does not
    fit even alone gets an empty window; the engine then refuses it with prompt_too_long."""
    engine = rt.engine
    budget = engine.max_positions - engine.request_cost(plan.speaker, text) - max_frames
    head: list[ContextTurn] = []
    if reference is not None and budget >= 0:
        reference_cost = engine.turn_cost(reference)
        if reference_cost > budget:
            raise EngineError(
                f"the voice's reference takes {reference_cost} positions and this segment "
                f"{engine.max_positions - budget} (its text and audio budget): past the "
                f"model's {engine.max_positions}; use a shorter reference clip or a smaller "
                "max_audio_length_ms",
                code="voice_reference_too_long",
            )
        budget -= reference_cost
        head = [reference]
    costs = [engine.turn_cost(piece) for piece in pieces_newest_first]
    keep = select_window(costs, budget=budget)
    if keep < len(pieces_newest_first):
        log.info(
            "job %s: context window keeps %d of %d pieces (budget %d positions)",
            plan.job_id,
            keep,
            len(pieces_newest_first),
            budget,
        )
    return head + pieces_newest_first[:keep][::-1]
