"""/v1/conversations/{cid}/turns: post (generated or provided), list, get, audio, codes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.body_limits import BodyLimit, json_turn_limit, upload_limit
from api.deps import OwnerDep, ReadSessionDep, StateDep
from api.presenters import turn_out
from api.schemas.core import CodesOut, TurnCreate, TurnOut
from api.services.turn_intake import parse_generated, store_generated, store_provided
from api.services.uploads import audio_form, speaker_field
from shared.audio.formats import EXTENSIONS, MEDIA_TYPES, AudioFormat, transcode
from shared.db.models import Turn
from shared.errors import Conflict, InvalidInput
from shared.mimi_codes import codes_from_bytes
from shared.services.conversations import get_conversation
from shared.services.turns import get_media, get_turn, list_turns

router = APIRouter(prefix="/v1/conversations/{conversation_id}/turns", tags=["turns"])


_POST_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": TurnCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["speaker", "text", "audio"],
                    "properties": {
                        "speaker": {"type": "integer", "minimum": 0},
                        "text": {"type": "string"},
                        "audio": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
        "required": True,
    }
}


@router.post(
    "",
    response_model=TurnOut,
    status_code=202,
    openapi_extra=_POST_DOC,
    responses={201: {"model": TurnOut, "description": "a provided turn (multipart upload)"}},
    summary="Add a turn: JSON → a turn for CSM to speak (202); multipart → the user's speech (201)",
)
async def post_turn(
    request: Request, state: StateDep, owner: OwnerDep, conversation_id: str
) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        turn = await _provided(request, state, owner, conversation_id)
        status = 201
    elif content_type.startswith("application/json") or not content_type:
        raw = await _read_limited(request, json_turn_limit())
        body = parse_generated(state, raw)
        turn = await run_in_threadpool(
            store_generated, state, owner=owner, conversation_id=conversation_id, body=body
        )
        status = 202
    else:
        raise InvalidInput(
            f"unsupported content type {content_type!r}: send application/json (a turn to "
            "generate) or multipart/form-data (a turn with your own audio)",
            code="unsupported_media_type",
        )
    return JSONResponse(turn_out(turn).model_dump(mode="json"), status_code=status)


async def _read_limited(request: Request, limit: BodyLimit) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and limit.declared_over(declared):
        raise limit.refuse(limit.declared_message(declared))
    body = await request.body()
    if limit.over(len(body)):
        raise limit.refuse(limit.declared_message(str(len(body))))
    return body


async def _provided(request: Request, state: StateDep, owner: str, conversation_id: str) -> Turn:
    limit = upload_limit(state.settings)
    missing = "multipart turn needs a file field 'audio'"
    async with audio_form(request, limit=limit, missing=missing) as (form, data):
        speaker_raw, text = form.get("speaker"), form.get("text")
    speaker = speaker_field(speaker_raw)
    if not isinstance(text, str):
        raise InvalidInput("multipart field 'text' is required", code="empty_text")
    return await run_in_threadpool(
        store_provided,
        state,
        owner=owner,
        conversation_id=conversation_id,
        speaker=speaker,
        text=text,
        data=data,
    )


@router.get("", response_model=list[TurnOut])
def list_(session: ReadSessionDep, owner: OwnerDep, conversation_id: str) -> list[TurnOut]:
    get_conversation(session, owner=owner, conversation_id=conversation_id)
    return [turn_out(t) for t in list_turns(session, conversation_id=conversation_id)]


@router.get("/{turn_id}", response_model=TurnOut)
def get(session: ReadSessionDep, owner: OwnerDep, conversation_id: str, turn_id: str) -> TurnOut:
    get_conversation(session, owner=owner, conversation_id=conversation_id)
    return turn_out(get_turn(session, conversation_id=conversation_id, turn_id=turn_id))


@router.get(
    "/{turn_id}/audio",
    response_class=Response,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
    summary="A turn's audio: wav, flac, mp3, opus (Ogg), aac (ADTS) or pcm (s16le), 24 kHz mono",
)
def get_audio(
    session: ReadSessionDep,
    owner: OwnerDep,
    conversation_id: str,
    turn_id: str,
    format: Annotated[AudioFormat, Query()] = "wav",  # noqa: A002
) -> Response:
    get_conversation(session, owner=owner, conversation_id=conversation_id)
    turn = get_turn(session, conversation_id=conversation_id, turn_id=turn_id)
    media = get_media(session, turn_id=turn.id)
    if media is None or media.audio_flac is None:
        raise Conflict(f"turn {turn_id} has no audio yet (status {turn.status})", code="no_audio")
    return Response(
        transcode(media.audio_flac, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'inline; filename="{turn_id}.{EXTENSIONS[format]}"'},
    )


@router.get("/{turn_id}/codes", response_model=CodesOut)
def get_codes(
    session: ReadSessionDep, owner: OwnerDep, conversation_id: str, turn_id: str
) -> CodesOut:
    get_conversation(session, owner=owner, conversation_id=conversation_id)
    turn = get_turn(session, conversation_id=conversation_id, turn_id=turn_id)
    media = get_media(session, turn_id=turn.id)
    if media is None or media.codes is None or media.n_q is None:
        raise Conflict(f"turn {turn_id} has no codes yet (status {turn.status})", code="no_codes")
    codes = codes_from_bytes(media.codes, media.n_q)
    return CodesOut(n_q=media.n_q, frames=codes.shape[0], codes=codes.T.tolist())
