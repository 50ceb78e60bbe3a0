"""Bodies of the CSM sidecar endpoint, ``POST /v1/csm/generate``: the shape other CSM
integrations already call (a text, a speaker, earlier turns with their audio)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.core import DEFAULTS, MAX_SEED, Strict
from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE

FRAME_RATE = SAMPLE_RATE / FRAME_SAMPLES  # 12.5 Mimi frames per second


class CsmSegment(Strict):
    """An earlier turn: what was said, by whom, and its audio (base64 of a WAV, or of any file
    the upload endpoints read; a ``data:`` URL prefix is allowed)."""

    text: str = Field(min_length=1)
    speaker: int = Field(ge=0)
    audio: str = Field(min_length=1, description="base64 audio file (WAV, FLAC, OGG, MP3, ...)")


class CsmGenerate(Strict):
    text: str = Field(min_length=1)
    speaker: int = Field(ge=0)
    context: list[CsmSegment] = Field(
        default_factory=list, description="earlier turns, oldest first; all are the prompt"
    )
    max_audio_length_ms: int | None = Field(default=DEFAULTS.max_audio_length_ms, ge=80)
    output: Literal["codes", "pcm"] = Field(
        default="codes", description="codes: Mimi codes; pcm: base64 float32 samples"
    )
    temperature: float = Field(
        default=DEFAULTS.temperature, ge=0.0, le=2.0, description="0 means greedy"
    )
    top_k: int = Field(default=DEFAULTS.top_k, ge=1, le=2048)
    seed: int | None = Field(default=DEFAULTS.seed, ge=0, le=MAX_SEED)


class MimiCodesOut(BaseModel):
    type: Literal["mimi_codes"] = "mimi_codes"
    n_q: int
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE
    codes: list[list[int]] = Field(description="one list per codebook, each one code per frame")


class AudioPcmOut(BaseModel):
    type: Literal["audio_pcm"] = "audio_pcm"
    sample_rate: int = SAMPLE_RATE
    pcm: str = Field(description="base64 of little-endian float32 mono samples")
