"""/v1/conversations: create, get, change its speakers' voices, delete."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Response

from api.deps import OwnerDep, ReadSessionDep, SessionDep, StateDep
from api.presenters import conversation_out
from api.schemas.core import ConversationCreate, ConversationOut, ConversationUpdate
from api.services.conversation_removal import remove_conversation
from shared.errors import InvalidInput
from shared.services.conversations import (
    count_turns,
    create_conversation,
    get_conversation,
)
from shared.services.quotas import check_conversation_quota
from shared.services.voices import bind_speakers, speaker_voices
from shared.settings import Settings

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

MAX_METADATA_BYTES = 16 * 1024


@router.post("", status_code=201, response_model=ConversationOut)
def create(
    state: StateDep, session: SessionDep, owner: OwnerDep, body: ConversationCreate | None = None
) -> ConversationOut:
    body = body or ConversationCreate()
    settings = state.settings
    turns = (
        settings.default_context_turns if body.max_context_turns is None else body.max_context_turns
    )
    if turns > settings.max_context_turns:
        raise InvalidInput(
            f"max_context_turns is {turns}; the limit is {settings.max_context_turns}",
            code="max_context_turns_too_large",
        )
    if len(ConversationCreate(metadata=body.metadata).model_dump_json()) > MAX_METADATA_BYTES:
        raise InvalidInput(
            f"metadata is larger than {MAX_METADATA_BYTES} bytes", code="metadata_too_large"
        )
    speakers = _speakers(settings, body.speakers)
    check_conversation_quota(session, settings, owner=owner)
    conversation = create_conversation(
        session, owner=owner, max_context_turns=turns, metadata=body.metadata
    )
    if speakers:
        bind_speakers(session, owner=owner, conversation_id=conversation.id, speakers=speakers)
    bound = speaker_voices(session, conversation_id=conversation.id)
    session.commit()
    return conversation_out(conversation, turn_count=0, speakers=bound)


@router.get("/{conversation_id}", response_model=ConversationOut)
def get(session: ReadSessionDep, owner: OwnerDep, conversation_id: str) -> ConversationOut:
    conversation = get_conversation(session, owner=owner, conversation_id=conversation_id)
    return conversation_out(
        conversation,
        turn_count=count_turns(session, conversation_id=conversation_id),
        speakers=speaker_voices(session, conversation_id=conversation_id),
    )


@router.patch("/{conversation_id}", response_model=ConversationOut)
def update(
    state: StateDep,
    session: SessionDep,
    owner: OwnerDep,
    conversation_id: str,
    body: ConversationUpdate,
) -> ConversationOut:
    """Bind speakers to voices (``null`` unbinds); the change applies to turns posted after it."""
    speakers = _speakers(state.settings, body.speakers)
    conversation = get_conversation(session, owner=owner, conversation_id=conversation_id)
    bind_speakers(session, owner=owner, conversation_id=conversation_id, speakers=speakers)
    out = conversation_out(
        conversation,
        turn_count=count_turns(session, conversation_id=conversation_id),
        speakers=speaker_voices(session, conversation_id=conversation_id),
    )
    session.commit()
    return out


def _speakers(settings: Settings, raw: Mapping[str, str | None]) -> dict[int, str | None]:
    """``{"0": "anna"}`` → ``{0: "anna"}``; 422 for a key that is not a speaker id."""
    speakers: dict[int, str | None] = {}
    for key, name in raw.items():
        if not (key.isascii() and key.isdigit()) or int(key) > settings.max_speaker:
            raise InvalidInput(
                f"speakers: {key!r} is not a speaker id (0 to {settings.max_speaker})",
                code="invalid_speaker",
            )
        speakers[int(key)] = name
    return speakers


@router.delete("/{conversation_id}", status_code=204)
def delete(state: StateDep, owner: OwnerDep, conversation_id: str) -> Response:
    remove_conversation(state, owner=owner, conversation_id=conversation_id)
    return Response(status_code=204)
