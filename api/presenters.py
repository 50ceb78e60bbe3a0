"""ORM rows → response bodies."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError

from api.schemas.core import ConversationOut, ErrorBody, JobOut, SegmentOut, TurnOut, VoiceOut
from shared.contract.segments import interrupted, segments_from_json, truncated
from shared.db.models import Conversation, Job, JobStatus, Turn, Voice, VoiceStatus
from shared.redis_io.keys import RedisKeys
from shared.services.voices import SERVER_OWNER


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Parley's error body: ``{"error": {"code", "message"}}``."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def audio_url(conversation_id: str, turn_id: str) -> str:
    return f"/v1/conversations/{conversation_id}/turns/{turn_id}/audio"


def conversation_out(
    conversation: Conversation, *, turn_count: int, speakers: Mapping[int, str]
) -> ConversationOut:
    return ConversationOut(
        id=conversation.id,
        max_context_turns=conversation.max_context_turns,
        metadata=conversation.meta,
        speakers={str(speaker): name for speaker, name in speakers.items()},
        turn_count=turn_count,
        created_at=conversation.created_at,
    )


def voice_out(voice: Voice) -> VoiceOut:
    error = ErrorBody(code="voice_failed", message=voice.error_message or "")
    return VoiceOut(
        id=voice.id,
        name=voice.name,
        text=voice.text,
        speaker=voice.speaker,
        status=voice.status,  # type: ignore[arg-type]
        duration_ms=voice.duration_ms,
        frames=voice.frames,
        error=error if voice.status == VoiceStatus.FAILED else None,
        audio_url=f"/v1/voices/{voice.name}/audio",
        created_at=voice.created_at,
        server=voice.owner == SERVER_OWNER,
    )


def turn_out(turn: Turn) -> TurnOut:
    has_audio = turn.status == JobStatus.SUCCEEDED or turn.source == "provided"
    segments = None if turn.segments is None else segments_from_json(turn.segments)
    return TurnOut(
        id=turn.id,
        conversation_id=turn.conversation_id,
        index=turn.index,
        speaker=turn.speaker,
        text=turn.text,
        source=turn.source,  # type: ignore[arg-type]
        status=turn.status,
        job_id=turn.job.id if turn.job else None,
        params=turn.params or {},
        frames=turn.frames,
        duration_ms=turn.duration_ms,
        sample_rate=turn.sample_rate,
        audio_url=audio_url(turn.conversation_id, turn.id) if has_audio else None,
        segments=None if segments is None else [SegmentOut(**s.to_json()) for s in segments],
        truncated=truncated(segments or []),
        interrupted=interrupted(segments or []),
        live=bool(turn.live),
        created_at=turn.created_at,
    )


def job_out(job: Job, *, redis: Redis, keys: RedisKeys) -> JobOut:
    frames = job.frames
    if job.status == JobStatus.RUNNING:
        try:
            live = redis.get(keys.job_frames(job.id))
        except RedisError:  # Redis away: progress as SQL last knew it
            live = None
        if live is not None:
            frames = int(live)
    error = (
        ErrorBody(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobOut(
        id=job.id,
        turn_id=job.turn_id,
        conversation_id=job.conversation_id,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        progress={"frames": frames},
        audio_url=(
            audio_url(job.conversation_id, job.turn_id)
            if job.status == JobStatus.SUCCEEDED
            else None
        ),
        error=error,
        model=job.model,
        test_model=job.test_model,
        attempts=job.attempts,
        worker=job.worker,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
