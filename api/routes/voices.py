"""/v1/voices: named voices (a reference clip and its transcript, encoded to codes once).

A voice is the caller's own (another key gets 404). Bound to a speaker of a conversation
(``{"speakers": {"0": "name"}}``), its reference is pinned at the head of that speaker's prompts.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.body_limits import upload_limit
from api.deps import OwnerDep, ReadSessionDep, SessionDep, StateDep
from api.presenters import voice_out
from api.schemas.core import CodesOut, VoiceOut
from api.services.uploads import audio_form, speaker_field
from api.services.voice_intake import store_voice
from shared.audio.formats import MEDIA_TYPES, AudioFormat, transcode
from shared.errors import Conflict, InvalidInput
from shared.mimi_codes import codes_from_bytes
from shared.services.voices import (
    check_deletable,
    delete_voice,
    get_voice,
    list_voices,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/voices", tags=["voices"])

_POST_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "text", "audio"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                        "text": {"type": "string", "description": "the clip's transcript"},
                        "audio": {"type": "string", "format": "binary"},
                        "speaker": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "the speaker id it speaks as outside a conversation",
                        },
                    },
                }
            }
        },
        "required": True,
    }
}


@router.post(
    "",
    response_model=VoiceOut,
    status_code=202,
    openapi_extra=_POST_DOC,
    summary="Make a voice from a reference clip and its transcript (202: a worker encodes it)",
)
async def post_voice(request: Request, state: StateDep, owner: OwnerDep) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInput(
            f"unsupported content type {content_type!r}: send multipart/form-data with fields "
            "name, text and a file audio",
            code="unsupported_media_type",
        )
    limit = upload_limit(state.settings)
    missing = "a voice needs a file field 'audio'"
    async with audio_form(request, limit=limit, missing=missing) as (form, data):
        name, text, speaker_raw = form.get("name"), form.get("text"), form.get("speaker", "0")
    if not isinstance(name, str):
        raise InvalidInput("multipart field 'name' is required", code="invalid_voice_name")
    if not isinstance(text, str):
        raise InvalidInput("multipart field 'text' is required", code="empty_text")
    voice = await run_in_threadpool(
        store_voice,
        state,
        owner=owner,
        name=name,
        text=text,
        speaker=speaker_field(speaker_raw),
        data=data,
    )
    return JSONResponse(voice_out(voice).model_dump(mode="json"), status_code=202)


@router.get("", response_model=list[VoiceOut])
def list_(session: ReadSessionDep, owner: OwnerDep) -> list[VoiceOut]:
    return [voice_out(v) for v in list_voices(session, owner=owner)]


@router.get("/{name}", response_model=VoiceOut)
def get(session: ReadSessionDep, owner: OwnerDep, name: str) -> VoiceOut:
    return voice_out(get_voice(session, owner=owner, name=name))


@router.get(
    "/{name}/audio",
    response_class=Response,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
)
def get_audio(
    session: ReadSessionDep,
    owner: OwnerDep,
    name: str,
    format: Annotated[AudioFormat, Query()] = "wav",  # noqa: A002
) -> Response:
    """The reference clip as stored (24 kHz mono), in any of the audio formats."""
    voice = get_voice(session, owner=owner, name=name)
    return Response(
        transcode(voice.audio_flac, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'inline; filename="{name}.{format}"'},
    )


@router.get("/{name}/codes", response_model=CodesOut)
def get_codes(session: ReadSessionDep, owner: OwnerDep, name: str) -> CodesOut:
    """The reference clip's Mimi codes; 409 while the voice is still encoding."""
    voice = get_voice(session, owner=owner, name=name)
    if voice.codes is None or voice.n_q is None:
        raise Conflict(f"voice {name!r} has no codes ({voice.status})", code="no_codes")
    codes = codes_from_bytes(voice.codes, voice.n_q)
    return CodesOut(n_q=voice.n_q, frames=codes.shape[0], codes=codes.T.tolist())


@router.delete("/{name}", status_code=204)
def delete(session: SessionDep, owner: OwnerDep, name: str) -> Response:
    """204; 409 ``voice_in_use`` while a conversation binds it or a waiting turn uses it."""
    voice = get_voice(session, owner=owner, name=name)
    check_deletable(voice, owner=owner)
    delete_voice(session, voice=voice)
    session.commit()
    return Response(status_code=204)
