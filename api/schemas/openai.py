"""Bodies of the OpenAI-compatible endpoints: ``/v1/audio/speech``, ``/v1/models``,
``/v1/audio/voices``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.core import Strict
from shared.audio.formats import AudioFormat
from shared.audio.tempo import MAX_SPEED, MIN_SPEED


class VoiceRef(Strict):
    """OpenAI's custom-voice object: ``{"id": "..."}``, resolved like a voice name."""

    id: str


class SpeechCreate(Strict):
    """OpenAI's speech request, plus Parley's sampling fields (the OpenAI SDK sends them through
    ``extra_body``) and ``conversation_id``."""

    model: str = Field(description="csm-1b, the configured model, or tts-1 / tts-1-hd / ...")
    input: str = Field(description="the text to speak")
    voice: str | VoiceRef = Field(description="an OpenAI voice name or a CSM speaker id")
    instructions: str | None = Field(
        default=None, description="accepted and ignored: CSM takes no style instructions"
    )
    response_format: AudioFormat = "mp3"
    speed: float = Field(
        default=1.0,
        ge=MIN_SPEED,
        le=MAX_SPEED,
        description="time-stretched at the same pitch (FFmpeg atempo); the stored turn is not",
    )
    stream_format: Literal["audio", "sse"] | None = Field(
        default=None,
        description="absent: the whole file once the turn is made; audio: chunks as they are "
        "made; sse: speech.audio.delta / speech.audio.done events",
    )
    conversation_id: str | None = Field(
        default=None,
        description="the conversation this is the next turn of (like X-Conversation-ID); "
        "'new' starts one that is kept",
    )
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    max_audio_length_ms: int | None = None


class SpeechUsage(BaseModel):
    """``input_tokens``: characters of ``input``; ``output_tokens``: Mimi frames (80 ms each)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class VoiceOut(BaseModel):
    id: str
    name: str
    speaker: int
    named: bool = Field(
        default=False, description="a named voice (the same voice everywhere), not a speaker id"
    )


class VoiceList(BaseModel):
    voices: list[VoiceOut]
