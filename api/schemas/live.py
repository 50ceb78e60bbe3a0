"""The live socket's messages (``/v1/conversations/{cid}/live``): what a client sends (JSON text
frames) and the events the server sends beside the audio (binary frames of 24 kHz mono s16le
PCM)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from api.schemas.core import Strict, TurnParams


class TextMessage(Strict):
    """Append text to the current turn (starting one when none is open)."""

    type: Literal["text"]
    text: str
    turn_id: str | None = Field(
        default=None, description="the turn the text is for; when given, the open turn's id"
    )
    params: TurnParams | None = Field(
        default=None, description="sampling for the turn this text starts (ignored after)"
    )


class EndMessage(Strict):
    """End the current turn: its last text is spoken, then it is done."""

    type: Literal["end"]
    turn_id: str | None = None


class CancelMessage(Strict):
    """Barge-in: stop every turn of this connection not yet done; each keeps what was spoken."""

    type: Literal["cancel"]


ClientMessage = Annotated[TextMessage | EndMessage | CancelMessage, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[Any] = TypeAdapter(ClientMessage)


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: ``{"type": kind, ...fields}``."""
    return {"type": kind, **fields}


def error_event(code: str, message: str) -> dict[str, Any]:
    return event("error", code=code, message=message)
