"""Conversation services: create, get, delete. They flush; callers commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Turn, is_id
from shared.errors import NotFound


def create_conversation(
    session: Session, *, owner: str, max_context_turns: int, metadata: dict[str, Any]
) -> Conversation:
    conversation = Conversation(owner=owner, max_context_turns=max_context_turns, meta=metadata)
    session.add(conversation)
    session.flush()
    return conversation


def get_conversation(session: Session, *, owner: str, conversation_id: str) -> Conversation:
    """The caller's conversation; NotFound for a missing one and for another owner's."""
    conversation = session.get(Conversation, conversation_id) if is_id(conversation_id) else None
    if conversation is None or conversation.owner != owner:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


def count_turns(session: Session, *, conversation_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Turn).where(Turn.conversation_id == conversation_id)
        )
        or 0
    )


def delete_conversation(session: Session, *, conversation: Conversation) -> None:
    session.delete(conversation)
    session.flush()
