"""Validating and storing a new turn (generated or provided), then handing it to the queue."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.resources import ApiState
from api.schemas.core import TurnCreate
from shared.audio import containers as audio
from shared.db.models import Turn
from shared.errors import InvalidInput
from shared.jobs.dispatch import claim_next
from shared.jobs.queue import send_job
from shared.resources import Resources
from shared.services.conversations import create_conversation, get_conversation
from shared.services.quotas import check_conversation_quota, check_job_quota
from shared.services.turns import create_generated_turn, create_provided_turn

log = logging.getLogger(__name__)


def check_text_and_speaker(state: Resources, *, speaker: int, text: str) -> str:
    settings = state.settings
    if not text.strip():
        raise InvalidInput("text is empty", code="empty_text")
    if "\x00" in text:  # PostgreSQL cannot store it; it is never speech
        raise InvalidInput("text contains a NUL character", code="invalid_text")
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
        raise InvalidInput(describe_validation_error(exc), code="invalid_input") from exc
    return check_generated(state, body)


def check_generated(state: ApiState, body: TurnCreate) -> TurnCreate:
    """The turn with its text stripped; InvalidInput past the limits. Without
    ``max_audio_length_ms`` each segment's budget follows its text (``shared.sentences``)."""
    text = check_text_and_speaker(state, speaker=body.speaker, text=body.text)
    limit = state.settings.max_audio_length_ms
    length = body.params.max_audio_length_ms
    if length is not None and length > limit:
        raise InvalidInput(
            f"params.max_audio_length_ms is {length}; the limit is {limit}",
            code="max_audio_length_ms_too_large",
        )
    return body.model_copy(update={"text": text})


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: what is wrong; ...`` for each of pydantic's errors."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def store_generated(
    state: ApiState,
    *,
    owner: str,
    conversation_id: str,
    body: TurnCreate,
    voice_id: str | None = None,
    live: bool = False,
) -> Turn:
    """The next turn of the owner's conversation; ``voice_id``: a named voice for this turn
    (else its speaker's binding). A ``live`` turn's text comes while it is spoken (its
    segments through ``shared.redis_io.live_text``); ``body.text`` is what came so far."""
    with state.sessions() as session:
        return _add_generated(
            state,
            session,
            owner=owner,
            conversation_id=conversation_id,
            body=body,
            voice_id=voice_id,
            live=live,
        )


def store_generated_in_new_conversation(
    state: ApiState,
    *,
    owner: str,
    body: TurnCreate,
    metadata: dict[str, Any],
    voice_id: str | None = None,
) -> Turn:
    """A new conversation of the owner's with this turn as its first, in one transaction: a
    full quota (conversations or queue) refuses both."""
    with state.sessions() as session:
        check_conversation_quota(session, state.settings, owner=owner)
        conversation = create_conversation(
            session,
            owner=owner,
            max_context_turns=state.settings.default_context_turns,
            metadata=metadata,
        )
        return _add_generated(
            state,
            session,
            owner=owner,
            conversation_id=conversation.id,
            body=body,
            voice_id=voice_id,
        )


def _add_generated(
    state: ApiState,
    session: Session,
    *,
    owner: str,
    conversation_id: str,
    body: TurnCreate,
    voice_id: str | None = None,
    live: bool = False,
) -> Turn:
    _admit(state, session, owner=owner, conversation_id=conversation_id)
    turn = create_generated_turn(
        session,
        owner=owner,
        conversation_id=conversation_id,
        speaker=body.speaker,
        text=body.text,
        params=body.params.model_dump(),
        voice_id=voice_id,
        live=live,
    )
    return _commit_and_dispatch(state, session, turn)


@dataclass(frozen=True)
class ProvidedAudio:
    """A provided turn checked and decoded, ready to store: its audio as FLAC."""

    speaker: int
    text: str
    audio_flac: bytes
    n_samples: int


def check_provided(state: Resources, *, speaker: int, text: str, data: bytes) -> ProvidedAudio:
    """Check a provided turn's text and speaker and decode its audio (InvalidInput naming what
    is wrong); nothing is stored."""
    text = check_text_and_speaker(state, speaker=speaker, text=text)
    samples = audio.decode_upload(data, max_duration_ms=state.settings.max_upload_duration_ms)
    return ProvidedAudio(
        speaker=speaker, text=text, audio_flac=audio.encode(samples, "flac"), n_samples=len(samples)
    )


def store_provided(
    state: ApiState, *, owner: str, conversation_id: str, speaker: int, text: str, data: bytes
) -> Turn:
    provided = check_provided(state, speaker=speaker, text=text, data=data)
    with state.sessions() as session:
        turn = _add_provided(
            state, session, owner=owner, conversation_id=conversation_id, provided=provided
        )
        return _commit_and_dispatch(state, session, turn)


def store_dialogue(
    state: ApiState,
    *,
    owner: str,
    context: Sequence[ProvidedAudio],
    body: TurnCreate,
    metadata: dict[str, Any],
) -> Turn:
    """A new conversation of the owner's holding the given turns, then a turn for CSM to speak
    with all of them as its context, in one transaction: a full quota refuses all of it.
    Returns the generated turn."""
    with state.sessions() as session:
        check_conversation_quota(session, state.settings, owner=owner)
        conversation = create_conversation(
            session, owner=owner, max_context_turns=len(context), metadata=metadata
        )
        for provided in context:
            _add_provided(
                state, session, owner=owner, conversation_id=conversation.id, provided=provided
            )
        return _add_generated(
            state, session, owner=owner, conversation_id=conversation.id, body=body
        )


def _add_provided(
    state: ApiState, session: Session, *, owner: str, conversation_id: str, provided: ProvidedAudio
) -> Turn:
    _admit(state, session, owner=owner, conversation_id=conversation_id)
    return create_provided_turn(
        session,
        owner=owner,
        conversation_id=conversation_id,
        speaker=provided.speaker,
        text=provided.text,
        audio_flac=provided.audio_flac,
        n_samples=provided.n_samples,
        sample_rate=audio.SAMPLE_RATE,
    )


def _admit(state: ApiState, session: Session, *, owner: str, conversation_id: str) -> None:
    """In the transaction that adds the turn, before it is added: 404 for a conversation that is
    not the caller's, then 429 when the caller's or the server's queue is full."""
    get_conversation(session, owner=owner, conversation_id=conversation_id)
    check_job_quota(session, state.settings, owner=owner)


def _commit_and_dispatch(state: ApiState, session: Session, turn: Turn) -> Turn:
    job_id = claim_next(session, turn.conversation_id)  # the row lock is already ours
    session.commit()
    if job_id is not None:  # first: the worker starts while we answer
        dispatch(state, conversation_id=turn.conversation_id, job_id=job_id)
    session.refresh(turn, ["job"])
    ids = {"job_id": turn.job.id, "conversation_id": turn.conversation_id}
    log.info("turn %s (index %d) stored as job %s", turn.id, turn.index, turn.job.id, extra=ids)
    return turn


def dispatch(state: ApiState, *, conversation_id: str, job_id: str) -> None:
    """Enqueue a claimed job. If the broker is away the turn is still accepted: SQL holds it,
    the claim is released, and the workers' recovery pass sends it once the broker is back."""
    send_job(
        state.sessions, state.celery, state.settings, job_id=job_id, conversation_id=conversation_id
    )
