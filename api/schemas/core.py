"""Request and response bodies of the public contract (v1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from shared.contract import params as turn_params

MAX_SEED = turn_params.MAX_SEED
DEFAULTS = turn_params.TurnParams()  # a turn's sampling defaults, defined by the contract


def _as_utc(value: datetime) -> datetime:
    """SQLite keeps no time zone: its timestamps (all written in UTC) come back naive."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A timestamp as the contract gives it: RFC 3339 with its offset, whatever the database.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class Strict(BaseModel):
    """A request body: no unknown fields, and JSON types as declared (no true or "5" for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ConversationCreate(Strict):
    max_context_turns: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    speakers: dict[str, str] = Field(
        default_factory=dict, description='speaker id → voice name, e.g. {"0": "anna"}'
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        # Python's JSON parser lets NaN, Infinity and lone surrogates ("\ud800") through;
        # PostgreSQL's json refuses the first two and no UTF-8 can hold the last.
        try:
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
            raise ValueError(
                "metadata must be plain JSON: no NaN or Infinity, no lone surrogates"
            ) from exc
        return value


class ConversationUpdate(Strict):
    speakers: dict[str, str | None] = Field(
        description="speaker id → voice name (null unbinds); speakers not named keep their voice"
    )


class ConversationOut(BaseModel):
    id: str
    max_context_turns: int
    metadata: dict[str, Any]
    speakers: dict[str, str]
    turn_count: int
    created_at: UtcDatetime


class TurnParams(Strict):
    """Sampling for one turn; the same params drive the backbone and the depth decoder."""

    temperature: float = Field(
        default=DEFAULTS.temperature, ge=0.0, le=2.0, description="0 means greedy"
    )
    top_k: int = Field(default=DEFAULTS.top_k, ge=1, le=2048)
    max_audio_length_ms: int | None = Field(default=DEFAULTS.max_audio_length_ms, ge=80)
    seed: int | None = Field(default=DEFAULTS.seed, ge=0, le=MAX_SEED)


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
    segments: list[SegmentOut] | None = Field(
        description="a generated turn's text as CSM speaks it, in order (null for a provided "
        "turn); a live turn's grow as its text comes and are listed once it is stored"
    )
    truncated: bool = Field(description="some segment reached its audio budget before its end")
    interrupted: bool = Field(description="the turn was interrupted: it holds what was spoken")
    live: bool = Field(description="its text came over /live while it was spoken")
    created_at: UtcDatetime


class SegmentOut(BaseModel):
    """One segment of a generated turn."""

    text: str
    frames: int = Field(description="the frames (80 ms each) it got")
    status: Literal["pending", "done", "truncated", "interrupted", "dropped"] = Field(
        description="pending: not spoken yet; done: the model ended it; truncated: it reached "
        "its audio budget; interrupted: cut by an interrupt; dropped: never spoken"
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    """The body of every 4xx (and of a 5xx the server reports): what went wrong, by name."""

    error: ErrorBody


class VoiceOut(BaseModel):
    id: str
    name: str
    text: str
    speaker: int
    status: Literal["encoding", "ready", "failed"]
    duration_ms: int
    frames: int | None
    error: ErrorBody | None
    audio_url: str
    created_at: datetime
    server: bool = Field(description="one of the server's voices (the operator's), for every key")


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
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class CodesOut(BaseModel):
    n_q: int
    frames: int
    frame_rate: float = 12.5
    codes: list[list[int]]


class ReadyOut(BaseModel):
    ready: bool
    # ready: everything answers. degraded: SQL answers, so turns are accepted and kept, but
    # Redis or every worker is away (turns wait). unavailable: the database is away.
    status: Literal["ready", "degraded", "unavailable"]
    checks: dict[str, str]
    workers: list[dict[str, Any]]
    model: str | None
    test_model: bool | None
