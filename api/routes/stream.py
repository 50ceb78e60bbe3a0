"""GET /v1/conversations/{cid}/turns/{tid}/stream: a turn's audio while it is generated.

The body is raw 16-bit little-endian mono PCM at 24 kHz (``format=pcm``, the default, served as
``audio/pcm`` with ``X-Sample-Rate``), the same samples after a 44-byte WAV header of open
length (``format=wav``), or a stream of ``flac``, ``mp3``, ``opus`` (Ogg) or ``aac`` (ADTS)
encoded as the audio arrives (``shared.audio.formats``). The samples are exactly those of the
turn's stored audio (pcm, wav, flac), or their lossy encoding.

- A finished generated turn, or a provided one: its stored audio at once (from SQL).
- A queued or running turn: the job's Redis stream from its first chunk, then live. The response
  starts with the first audio. While the stream is quiet the job's state is re-read from SQL
  every second, so a job that ends without a terminal entry ends the stream too, and so does a
  running job whose worker stopped beating.
- A turn failed or cancelled before any audio: 409 ``turn_failed`` / ``turn_cancelled``; one
  that fails after some audio simply ends the stream.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api.deps import OwnerDep, StateDep
from api.services.speech_output import audio_headers
from api.services.stream_audio import LiveAudio, no_audio_error, stored_body, turn_state
from shared.audio.formats import MEDIA_TYPES, AudioFormat
from shared.db.models import JobStatus

router = APIRouter(prefix="/v1/conversations/{conversation_id}/turns", tags=["turns"])


async def _stored_response(fmt: AudioFormat, flac: bytes) -> Response:
    body = await run_in_threadpool(stored_body, flac, fmt)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=audio_headers(fmt))


@router.get(
    "/{turn_id}/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}},
        409: {"description": "the turn failed or was cancelled before any audio"},
    },
    summary="Stream a turn's audio while it is generated (default: 16-bit PCM, 24 kHz mono)",
)
async def stream_audio(
    request: Request,
    state: StateDep,
    owner: OwnerDep,
    conversation_id: str,
    turn_id: str,
    format: Annotated[AudioFormat, Query()] = "pcm",  # noqa: A002
) -> Response:
    turn = await run_in_threadpool(
        turn_state, state, owner=owner, conversation_id=conversation_id, turn_id=turn_id
    )
    if turn.flac is not None:
        return await _stored_response(format, turn.flac)
    if turn.job_id is None or JobStatus(turn.status).finished:
        raise no_audio_error(turn_id, turn.status, turn.error)
    live = LiveAudio(state, job_id=turn.job_id, turn_id=turn_id)
    try:
        first = b""
        while not first and not live.finished:
            first = await live.next()
            if not first and await request.is_disconnected():
                await live.close()
                return Response(status_code=204)  # nobody is there to read it
    except BaseException:
        await live.close()
        raise
    if not first:  # it ended before any audio: say how, from SQL
        await live.close()
        turn = await run_in_threadpool(
            turn_state, state, owner=owner, conversation_id=conversation_id, turn_id=turn_id
        )
        if turn.flac is not None:
            return await _stored_response(format, turn.flac)
        raise no_audio_error(turn_id, turn.status, turn.error)
    return StreamingResponse(
        live.body(first, format),
        media_type=MEDIA_TYPES[format],
        headers=audio_headers(format),
        background=BackgroundTask(live.close),  # also when the body never started
    )
