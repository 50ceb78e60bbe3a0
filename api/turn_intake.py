"""Validating and storing a new turn (generated or provided), then handing it to the queue."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas import TurnCreate
from api.state import ApiState
from shared import audio
from shared.dispatch import claim_next, lock_conversation
from shared.errors import InvalidInput, Unavailable
from shared.models import Job, Turn
from shared.queue import enqueue_job
from shared.turns import create_generated_turn, create_provided_turn

log = logging.getLogger(__name__)


def check_text_and_speaker(state: ApiState, *, speaker: int, text: str) -> str:
    settings = state.settings
    if not text.strip():
        raise InvalidInput("text is empty", code="empty_text")
    if len(text) > settings.max_text_chars:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {settings.max_text_chars} "
            "(max_text_chars)",
            code="text_too_long",
        )
    if not 0 <= speaker <= settings.max_speaker:
        raise InvalidInput(
            f"speaker must be between 0 and {settings.max_speaker}, got {speaker}",
            code="invalid_speaker",
        )
    return text.strip()


def parse_generated(state: ApiState, raw: bytes) -> TurnCreate:
    try:
        body = TurnCreate.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise InvalidInput(_describe(exc), code="invalid_input") from exc
    text = check_text_and_speaker(state, speaker=body.speaker, text=body.text)
    limit = state.settings.max_audio_length_ms
    length = body.params.max_audio_length_ms
    if length is None:
        length = min(state.settings.default_audio_length_ms, limit)
    if length > limit:
        raise InvalidInput(
            f"params.max_audio_length_ms is {length}; the limit is {limit}",
            code="max_audio_length_ms_too_large",
        )
    params = body.params.model_copy(update={"max_audio_length_ms": length})
    return body.model_copy(update={"text": text, "params": params})


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def store_generated(state: ApiState, *, owner: str, conversation_id: str, body: TurnCreate) -> Turn:
    with state.sessions() as session:
        turn = create_generated_turn(
            session,
            owner=owner,
            conversation_id=conversation_id,
            speaker=body.speaker,
            text=body.text,
            params=body.params.model_dump(),
        )
        return _commit_and_dispatch(state, session, turn)


def store_provided(
    state: ApiState, *, owner: str, conversation_id: str, speaker: int, text: str, data: bytes
) -> Turn:
    text = check_text_and_speaker(state, speaker=speaker, text=text)
    samples = audio.decode_upload(data, max_duration_ms=state.settings.max_upload_duration_ms)
    flac = audio.encode(samples, "flac")
    with state.sessions() as session:
        turn = create_provided_turn(
            session,
            owner=owner,
            conversation_id=conversation_id,
            speaker=speaker,
            text=text,
            audio_flac=flac,
            n_samples=len(samples),
            sample_rate=audio.SAMPLE_RATE,
        )
        return _commit_and_dispatch(state, session, turn)


def _commit_and_dispatch(state: ApiState, session: Session, turn: Turn) -> Turn:
    job_id = claim_next(session, turn.conversation_id)  # the row lock is already ours
    session.commit()
    if job_id is not None:  # first: the worker starts while we answer
        dispatch(state, conversation_id=turn.conversation_id, job_id=job_id)
    session.refresh(turn, ["job"])
    return turn


def dispatch(state: ApiState, *, conversation_id: str, job_id: str) -> None:
    """Enqueue a claimed job; if the broker is unreachable, release the claim and say so."""
    try:
        enqueue_job(state.celery, state.settings, job_id, conversation_id)
    except Exception as exc:  # kombu raises many types for a broker that is away
        log.error("enqueue of job %s failed: %s", job_id, exc)
        with state.sessions() as session:
            lock_conversation(session, conversation_id)
            job = session.get(Job, job_id)
            if job is not None:
                job.dispatched = False
            session.commit()
        raise Unavailable(
            "the job queue is unreachable; the turn is stored and queued again by the next "
            "change to its conversation",
            code="queue_unavailable",
        ) from exc
