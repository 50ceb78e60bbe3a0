"""SQLAlchemy models: conversations, turns (with their audio and Mimi codes), jobs, API keys,
voices and the speakers bound to them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Job states are the contract's; re-exported for the models' users.
from shared.contract.states import JobStatus as JobStatus


def new_id() -> str:
    return str(uuid.uuid4())


def is_id(value: str) -> bool:
    """Whether ``value`` could be a row's id (as :func:`new_id` makes them). Lookups check it
    first: anything else is simply not found, and never reaches SQL (PostgreSQL fails on a NUL)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobKind(StrEnum):
    GENERATE = "generate"  # speak a turn with CSM
    ENCODE = "encode"  # encode a provided turn's audio to Mimi codes, once


class VoiceStatus(StrEnum):
    """A voice's life: encoding → ready | failed (its reference clip encoded to codes, once)."""

    ENCODING = "encoding"
    READY = "ready"
    FAILED = "failed"


class TurnSource(StrEnum):
    GENERATED = "generated"
    PROVIDED = "provided"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # sha256 of the bearer key that made it ("open" when the server runs without keys).
    owner: Mapped[str] = mapped_column(String(64), index=True)
    max_context_turns: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Index the next turn gets; bumped under the conversation's row lock.
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    turns: Mapped[list[Turn]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Turn.index",
    )


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("conversation_id", "index", name="uq_turn_index"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sample_rate: Mapped[int] = mapped_column(Integer, default=24000)
    # A generated turn's segments (``shared.contract.segments``); None for a provided turn.
    segments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Its text comes while it is spoken (``/live``): the worker reads the text's segments from
    # Redis (``shared.redis_io.live_text``) and stores the whole text at the end.
    live: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="turns")
    job: Mapped[Job] = relationship(
        back_populates="turn", cascade="all, delete-orphan", passive_deletes=True
    )
    media: Mapped[TurnMedia | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class TurnMedia(Base):
    """A turn's audio (FLAC, 24 kHz mono) and Mimi codes, apart from the light turn row."""

    __tablename__ = "turn_media"

    turn_id: Mapped[str] = mapped_column(
        ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True
    )
    audio_flac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # int16 little endian, (frames, n_q) row major.
    codes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    n_q: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_conversation_status", "conversation_id", "status"),
        # The server-wide count of queued and running jobs (backpressure) on every post.
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), unique=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    # Sent to the broker. At most one queued-and-dispatched or running job per conversation.
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    test_model: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    turn: Mapped[Turn] = relationship(back_populates="job")


class ApiKey(Base):
    """A bearer key, stored as its sha256 (which is also the owner of what it makes)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key's first few characters, to tell keys apart in listings; never enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Voice(Base):
    """A named voice: a reference clip, its transcript and its Mimi codes (encoded once, on a
    worker). Bound to a speaker of a conversation, it is pinned at the head of that speaker's
    prompts."""

    __tablename__ = "voices"
    __table_args__ = (
        UniqueConstraint("owner", "name", name="uq_voice_owner_name"),
        # Every worker looks for voices still encoding after each heartbeat.
        Index("ix_voices_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))  # as Conversation.owner
    name: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)  # the reference clip's transcript
    # The speaker id it speaks as outside a conversation; in one, it is the bound speaker's.
    speaker: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=VoiceStatus.ENCODING)
    duration_ms: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The reference clip (FLAC, 24 kHz mono) and its codes (as TurnMedia); loaded on demand.
    audio_flac: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    codes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    n_q: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When it was last sent to the workers to be encoded (sent again if still encoding long after).
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SpeakerVoice(Base):
    """A conversation's speaker bound to a voice."""

    __tablename__ = "speaker_voices"

    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    speaker: Mapped[int] = mapped_column(Integer, primary_key=True)
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id"), index=True)


class TurnVoice(Base):
    """The voice a generated turn is spoken with: its speaker's binding when it was posted."""

    __tablename__ = "turn_voices"

    turn_id: Mapped[str] = mapped_column(
        ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True
    )
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"), index=True)
