"""OpenAI-compatible speech: ``POST /v1/audio/speech``, ``GET /v1/models``,
``GET /v1/audio/voices``.

A request is one generated turn, queued like any other (``api.services.turn_intake``): the next
turn of the caller's conversation named by ``X-Conversation-ID`` (or ``conversation_id``),
spoken with its context; the first of a new kept conversation for ``"new"``; else the only turn
of a one-off conversation, removed once the request is answered. Without ``stream_format`` the
answer is the whole file once the turn is made; ``audio`` streams the file as the turn is
generated, ``sse`` sends it base64 in ``speech.audio.delta`` events, then ``speech.audio.done``
with the usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from api.deps import OwnerDep, ReadSessionDep, StateDep
from api.resources import ApiState
from api.schemas.core import ErrorOut, TurnCreate, TurnParams
from api.schemas.openai import ModelList, ModelOut, SpeechCreate, VoiceList, VoiceOut
from api.services.openai_models import CREATED, check_model, model_ids, owned_by
from api.services.openai_voices import OPENAI_VOICES, resolve_voice
from api.services.speech_output import (
    SSE_MEDIA_TYPE,
    StreamRender,
    audio_headers,
    media_type,
    render_file,
    sse_delta,
    sse_done,
    sse_error,
    usage,
)
from api.services.speech_turn import (
    SpeechTurn,
    first_audio,
    outcome_error,
    read_outcome,
    release,
    start_turn,
    wait_finished,
)
from api.services.stream_audio import LiveAudio
from api.services.turn_intake import check_generated, describe_validation_error
from shared.db.models import JobStatus
from shared.errors import InvalidInput, NotFound
from shared.services.voices import list_voices as list_named_voices

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList, summary="Models, in OpenAI's list shape")
def list_models(state: StateDep, _owner: OwnerDep) -> ModelList:
    return ModelList(
        data=[
            ModelOut(id=m, created=CREATED, owned_by=owned_by(m)) for m in model_ids(state.settings)
        ]
    )


@router.get(
    "/audio/voices",
    response_model=VoiceList,
    summary="Voice names: named voices (the caller's and the server's), then OpenAI's names",
)
def list_voices(session: ReadSessionDep, owner: OwnerDep) -> VoiceList:
    named = [
        VoiceOut(id=v.name, name=v.name, speaker=v.speaker, named=True)
        for v in list_named_voices(session, owner=owner)
    ]
    taken = {v.name for v in named}
    builtin = [
        VoiceOut(id=n, name=n, speaker=s) for n, s in OPENAI_VOICES.items() if n not in taken
    ]
    return VoiceList(voices=named + builtin)


def _turn_body(state: ApiState, owner: str, body: SpeechCreate) -> tuple[TurnCreate, str | None]:
    """The turn to speak and the named voice it speaks with (None: its speaker id alone)."""
    check_model(body.model, state.settings)
    voice = body.voice if isinstance(body.voice, str) else body.voice.id
    with state.reads() as session:
        resolved = resolve_voice(session, owner=owner, name=voice)
    speaker = resolved.speaker
    if speaker > state.settings.max_speaker:
        raise InvalidInput(
            f"voice {voice!r} is speaker {speaker}; this server's speakers end at "
            f"{state.settings.max_speaker} (max_speaker)",
            code="unknown_voice",
        )
    given = {
        k: v
        for k in ("seed", "temperature", "top_k", "max_audio_length_ms")
        if (v := getattr(body, k)) is not None
    }
    try:
        params = TurnParams(**given)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc), code="invalid_input") from exc
    turn = check_generated(state, TurnCreate(speaker=speaker, text=body.input, params=params))
    return turn, resolved.voice_id


def _conversation(header: str | None, body: SpeechCreate) -> str | None:
    header = header.strip() if header else None
    if header and body.conversation_id and header != body.conversation_id:
        raise InvalidInput(
            f"X-Conversation-ID ({header}) and conversation_id ({body.conversation_id}) differ",
            code="conversation_mismatch",
        )
    return header or body.conversation_id


@router.post(
    "/audio/speech",
    response_class=Response,
    responses={
        200: {
            "content": {
                **{t: {} for t in ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac")},
                **{t: {} for t in ("audio/wav", "audio/pcm", SSE_MEDIA_TYPE)},
            },
            "headers": {
                "X-Conversation-ID": {"description": "the conversation (unless one-off)"},
                "X-Conversation-Turn": {"description": "the turn's id (unless one-off)"},
            },
        },
        404: {"description": "X-Conversation-ID names no conversation of the caller's"},
        409: {"description": "the turn failed or was cancelled before any audio"},
        504: {"model": ErrorOut, "description": "the turn was not done within sync_wait_s"},
    },
    summary="Speak text (OpenAI's speech API), optionally as the next turn of a conversation",
)
async def create_speech(
    request: Request,
    state: StateDep,
    owner: OwnerDep,
    body: SpeechCreate,
    x_conversation_id: Annotated[str | None, Header()] = None,
) -> Response:
    turn_body, voice_id = await run_in_threadpool(_turn_body, state, owner, body)
    turn = await run_in_threadpool(
        start_turn,
        state,
        owner=owner,
        conversation_id=_conversation(x_conversation_id, body),
        body=turn_body,
        voice_id=voice_id,
    )
    done = _Done(state, owner, turn)
    streaming = False
    try:
        if body.stream_format is not None:
            done.live = LiveAudio(state, job_id=turn.job_id, turn_id=turn.turn_id)
            first = await first_audio(state, done.live, turn, request)
            if first is None:
                return Response(status_code=204)  # the caller left: nobody is there to read it
            if first:
                streaming = True
                return StreamingResponse(
                    _stream(state, turn, body, done, first),
                    media_type=(
                        SSE_MEDIA_TYPE
                        if body.stream_format == "sse"
                        else media_type(body.response_format)
                    ),
                    headers={**audio_headers(body.response_format), **turn.headers()},
                    background=BackgroundTask(done),  # also when the body never started
                )
        # Not streamed, or it ended before any audio: wait for it, and send it or say why.
        return await _whole_file(request, state, turn, body)
    finally:
        if not streaming:
            await done()


class _Done:
    """What ends a request, once: close its live stream, release a one-off conversation."""

    def __init__(self, state: ApiState, owner: str, turn: SpeechTurn) -> None:
        self.state, self.owner, self.turn = state, owner, turn
        self.live: LiveAudio | None = None
        self._done = False

    async def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        if self.live is not None:
            await self.live.close()
        await release(self.state, self.owner, self.turn)


async def _whole_file(
    request: Request, state: ApiState, turn: SpeechTurn, body: SpeechCreate
) -> Response:
    """Wait for the turn, then answer with all of it (an SSE answer: one delta and done)."""
    if not await wait_finished(state, turn, request):
        return Response(status_code=204)  # the caller left
    outcome = await run_in_threadpool(read_outcome, state, turn, with_audio=True)
    if outcome.status != JobStatus.SUCCEEDED or outcome.pcm is None:
        raise outcome_error(turn, outcome)
    data = await run_in_threadpool(render_file, outcome.pcm, body.response_format, body.speed)
    headers = {**audio_headers(body.response_format), **turn.headers()}
    if body.stream_format == "sse":
        events = sse_delta(data) + sse_done(usage(turn_text(body), outcome.frames))
        return Response(events, media_type=SSE_MEDIA_TYPE, headers=headers)
    return Response(data, media_type=media_type(body.response_format), headers=headers)


def turn_text(body: SpeechCreate) -> str:
    return body.input.strip()


async def _stream(
    state: ApiState, turn: SpeechTurn, body: SpeechCreate, done: _Done, first: bytes
) -> AsyncIterator[bytes]:
    sse = body.stream_format == "sse"
    render = StreamRender(body.response_format, body.speed)
    live = done.live
    assert live is not None
    try:
        pcm = first
        while True:
            data = b""
            if pcm:
                data = await render.feed_off_loop(pcm)
            if data:
                yield sse_delta(data) if sse else data
            if live.finished:
                break
            pcm = await live.next()
        tail = await render.finish_off_loop()
        if tail:
            yield sse_delta(tail) if sse else tail
        if sse:
            yield await _sse_end(state, turn, body)
    finally:
        await done()


async def _sse_end(state: ApiState, turn: SpeechTurn, body: SpeechCreate) -> bytes:
    try:
        outcome = await run_in_threadpool(read_outcome, state, turn, with_audio=False)
    except NotFound as exc:
        return sse_error(exc.code, exc.message)
    if outcome.status == JobStatus.SUCCEEDED:
        return sse_done(usage(turn_text(body), outcome.frames))
    error = outcome_error(turn, outcome)
    return sse_error(error.code, error.message)
