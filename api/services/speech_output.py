"""A speech response's bytes: the turn's PCM at the requested speed, in the requested format,
as one file or as a stream (chunks, or OpenAI's server-sent events)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import anyio
import numpy as np
from fastapi.concurrency import run_in_threadpool

from api.schemas.openai import SpeechUsage
from shared.audio import containers as audio
from shared.audio.formats import MEDIA_TYPES, StreamEncoder, encode_file
from shared.audio.tempo import TempoStretch, stretch

SSE_MEDIA_TYPE = "text/event-stream"


def render_file(pcm: bytes, fmt: str, speed: float) -> bytes:
    """The whole file: every sample of ``pcm`` (16-bit mono 24 kHz) at ``speed``."""
    samples = stretch(np.frombuffer(pcm, dtype="<i2"), speed)
    return encode_file(samples, fmt)


class StreamRender:
    """PCM chunks in, the response's bytes out: the speed change (when not 1.0), then the
    format's stream encoder. :meth:`feed` may return nothing yet; :meth:`finish` the rest."""

    def __init__(self, fmt: str, speed: float) -> None:
        self._tempo = TempoStretch(speed) if speed != 1.0 else None
        self._encoder = StreamEncoder(fmt)
        # Bytes passed through as they are: cheap enough for the event loop. Encoding (LAME
        # takes ~7 ms of CPU per 320 ms chunk) or stretching runs in a worker thread.
        self.passthrough = self._tempo is None and self._encoder.passthrough

    def feed(self, pcm: bytes) -> bytes:
        if self._tempo is not None:
            pcm = audio.pcm16_bytes(self._tempo.feed(np.frombuffer(pcm, dtype="<i2")))
        return self._encoder.feed(pcm)

    def finish(self) -> bytes:
        tail = b""
        if self._tempo is not None:
            tail = self._encoder.feed(audio.pcm16_bytes(self._tempo.finish()))
        return tail + self._encoder.finish()

    async def feed_off_loop(self, pcm: bytes) -> bytes:
        """:meth:`feed`, in a worker thread unless the bytes only pass through."""
        return await self._off_loop(self.feed, pcm)

    async def finish_off_loop(self) -> bytes:
        """:meth:`finish`, in a worker thread unless the bytes only pass through."""
        return await self._off_loop(self.finish)

    async def _off_loop(self, step: Callable[..., bytes], *args: bytes) -> bytes:
        """Shielded: a caller that leaves mid-step never leaves the encoder half way through a
        call."""
        if self.passthrough:
            return step(*args)
        with anyio.CancelScope(shield=True):
            data: bytes = await run_in_threadpool(step, *args)
        return data


def media_type(fmt: str) -> str:
    return MEDIA_TYPES[fmt]


def audio_headers(fmt: str) -> dict[str, str]:
    """Raw PCM says its own layout in headers; so does WAV, whose streamed header is the same
    for every length."""
    headers = {"Cache-Control": "no-store"}
    if fmt in ("pcm", "wav"):
        headers.update(
            {"X-Sample-Rate": str(audio.SAMPLE_RATE), "X-Channels": "1", "X-Sample-Format": "s16le"}
        )
    return headers


def usage(text: str, frames: int) -> SpeechUsage:
    return SpeechUsage(
        input_tokens=len(text), output_tokens=frames, total_tokens=len(text) + frames
    )


def sse_event(payload: dict[str, object]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def sse_delta(data: bytes) -> bytes:
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


def sse_done(used: SpeechUsage) -> bytes:
    return sse_event({"type": "speech.audio.done", "usage": used.model_dump()})


def sse_error(code: str, message: str) -> bytes:
    """Sent instead of ``speech.audio.done`` when the turn fails or is cancelled mid-stream."""
    return sse_event({"type": "error", "error": {"code": code, "message": message}})
