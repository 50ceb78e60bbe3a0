"""Request and response bodies of the public contract (v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationCreate(Strict):
    max_context_turns: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ConversationOut(BaseModel):
    id: str
    max_context_turns: int
    metadata: dict[str, Any]
    turn_count: int
    created_at: datetime


class TurnParams(Strict):
    """Sampling for one turn; the same params drive the backbone and the depth decoder."""

    temperature: float = Field(default=0.9, ge=0.0, le=2.0, description="0 means greedy")
    top_k: int = Field(default=50, ge=1, le=2048)
    max_audio_length_ms: int | None = Field(default=None, ge=80)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class TurnCreate(Strict):
    speaker: int = Field(ge=0)
    text: str = Field(min_length=1)
    params: TurnParams = Field(default_factory=TurnParams)


class TurnOut(BaseModel):
    id: str
    conversation_id: str
    index: int
    speaker: int
    text: str
    source: Literal["generated", "provided"]
    status: str
    job_id: str | None
    params: dict[str, Any]
    frames: int | None
    duration_ms: int | None
    sample_rate: int
    audio_url: str | None
    created_at: datetime


class ErrorBody(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    turn_id: str
    conversation_id: str
    kind: Literal["generate", "encode"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: dict[str, int]
    audio_url: str | None
    error: ErrorBody | None
    model: str | None
    test_model: bool
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class CodesOut(BaseModel):
    n_q: int
    frames: int
    frame_rate: float = 12.5
    codes: list[list[int]]


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]
    workers: list[dict[str, Any]]
    model: str | None
    test_model: bool | None
