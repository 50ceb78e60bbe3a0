"""Turn services: a generated turn (with its job) or a provided one. They flush; callers commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.contract.segments import pending, segments_to_json
from shared.db.models import Conversation, Job, JobKind, Turn, TurnMedia, TurnSource, is_id
from shared.errors import NotFound
from shared.sentences import split_segments
from shared.services.voices import pin_bound_voice


def _allocate_index(session: Session, *, owner: str, conversation_id: str) -> int:
    """Lock the conversation's row and take its next turn index."""
    if not is_id(conversation_id):
        raise NotFound(f"conversation {conversation_id} not found")
    index = session.scalar(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.owner == owner)
        .values(next_index=Conversation.next_index + 1)
        .returning(Conversation.next_index)
        .execution_options(synchronize_session=False)
    )
    if index is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return index - 1


def _add_turn(
    session: Session,
    *,
    owner: str,
    conversation_id: str,
    kind: JobKind,
    media: TurnMedia | None = None,
    **fields: Any,
) -> Turn:
    """Append a turn with its queued job at the conversation's next index (taking its lock)."""
    index = _allocate_index(session, owner=owner, conversation_id=conversation_id)
    turn = Turn(conversation_id=conversation_id, index=index, **fields)
    turn.job = Job(conversation_id=conversation_id, kind=kind)
    turn.media = media
    session.add(turn)
    session.flush()
    return turn


def create_generated_turn(
    session: Session,
    *,
    owner: str,
    conversation_id: str,
    speaker: int,
    text: str,
    params: dict[str, Any],
    voice_id: str | None = None,
    live: bool = False,
) -> Turn:
    """A turn for CSM to speak, with its queued job, and its voice: ``voice_id`` (a voice the
    request named), else the one its speaker is bound to. Its text is cut into segments now
    (all pending); a ``live`` turn starts with none, its text coming while it is spoken."""
    turn = _add_turn(
        session,
        owner=owner,
        conversation_id=conversation_id,
        kind=JobKind.GENERATE,
        speaker=speaker,
        text=text,
        source=TurnSource.GENERATED,
        params=params,
        live=live,
        segments=[] if live else segments_to_json(pending(split_segments(text))),
    )
    pin_bound_voice(session, turn=turn, voice_id=voice_id)
    return turn


def create_provided_turn(
    session: Session,
    *,
    owner: str,
    conversation_id: str,
    speaker: int,
    text: str,
    audio_flac: bytes,
    n_samples: int,
    sample_rate: int,
) -> Turn:
    """A turn the user spoke. Its audio is stored now; a job encodes it to codes, in order."""
    return _add_turn(
        session,
        owner=owner,
        conversation_id=conversation_id,
        kind=JobKind.ENCODE,
        media=TurnMedia(audio_flac=audio_flac),
        speaker=speaker,
        text=text,
        source=TurnSource.PROVIDED,
        duration_ms=round(n_samples * 1000 / sample_rate),
        sample_rate=sample_rate,
    )


def list_turns(session: Session, *, conversation_id: str) -> list[Turn]:
    return list(
        session.scalars(
            select(Turn).where(Turn.conversation_id == conversation_id).order_by(Turn.index)
        )
    )


def get_turn(session: Session, *, conversation_id: str, turn_id: str) -> Turn:
    turn = session.get(Turn, turn_id) if is_id(turn_id) else None
    if turn is None or turn.conversation_id != conversation_id:
        raise NotFound(f"turn {turn_id} not found")
    return turn


def get_media(session: Session, *, turn_id: str) -> TurnMedia | None:
    return session.get(TurnMedia, turn_id)
