"""/v1/conversations: create, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import select

from api.deps import OwnerDep, ReadSessionDep, SessionDep, StateDep
from api.presenters import conversation_out
from api.schemas import ConversationCreate, ConversationOut
from shared.conversations import (
    count_turns,
    create_conversation,
    delete_conversation,
    get_conversation,
)
from shared.errors import InvalidInput
from shared.jobs import announce_cancel
from shared.models import Job, JobStatus

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
    conversation = create_conversation(
        session, owner=owner, max_context_turns=turns, metadata=body.metadata
    )
    session.commit()
    return conversation_out(conversation, turn_count=0)


@router.get("/{conversation_id}", response_model=ConversationOut)
def get(session: ReadSessionDep, owner: OwnerDep, conversation_id: str) -> ConversationOut:
    conversation = get_conversation(session, owner=owner, conversation_id=conversation_id)
    return conversation_out(
        conversation, turn_count=count_turns(session, conversation_id=conversation_id)
    )


@router.delete("/{conversation_id}", status_code=204)
def delete(state: StateDep, session: SessionDep, owner: OwnerDep, conversation_id: str) -> Response:
    conversation = get_conversation(session, owner=owner, conversation_id=conversation_id)
    jobs = session.execute(
        select(Job.id, Job.status).where(Job.conversation_id == conversation_id)
    ).all()
    delete_conversation(session, conversation=conversation)
    session.commit()
    # Stop work in flight (its rows are gone; the worker discards what it made), end its
    # listeners, and drop the hot context and the finished jobs' audio streams.
    for job_id, status in jobs:
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            announce_cancel(state.redis, state.keys, job_id)
        else:
            state.redis.delete(state.keys.job_audio(job_id), state.keys.job_frames(job_id))
    state.context.delete(conversation_id)
    return Response(status_code=204)
