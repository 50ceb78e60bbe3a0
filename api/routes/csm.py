"""``POST /v1/csm/generate``: the CSM sidecar shape other integrations call. One request is one
generated turn after the given context, in a conversation made for it and removed afterwards."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import OwnerDep, StateDep
from api.schemas.core import ErrorOut
from api.schemas.csm import AudioPcmOut, CsmGenerate, MimiCodesOut
from api.services.csm_sidecar import METADATA, answer, check_request
from api.services.speech_turn import release, start_dialogue, wait_finished

router = APIRouter(prefix="/v1/csm", tags=["csm"])


@router.post(
    "/generate",
    response_model=MimiCodesOut | AudioPcmOut,
    responses={
        409: {"description": "the turn failed or was cancelled, or a context segment failed"},
        422: {"description": "bad text, speaker, audio or limits; names the segment at fault"},
        504: {"model": ErrorOut, "description": "the turn was not done within sync_wait_s"},
    },
    summary="Speak text after the given context; Mimi codes, or PCM with output: pcm",
)
async def generate(
    request: Request, state: StateDep, owner: OwnerDep, body: CsmGenerate
) -> MimiCodesOut | AudioPcmOut | Response:
    context, turn_body = await run_in_threadpool(check_request, state, body)
    turn = await run_in_threadpool(
        start_dialogue, state, owner=owner, context=context, body=turn_body, metadata=METADATA
    )
    try:
        if not await wait_finished(state, turn, request):
            return Response(status_code=204)  # the caller left
        return await run_in_threadpool(answer, state, turn, body.output)
    finally:
        await release(state, owner, turn)
