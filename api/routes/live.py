"""/v1/conversations/{cid}/live: a WebSocket that takes a turn's text as it is written and
sends its audio as it is spoken (``api.services.live_session``; the messages are in
``api.schemas.live``)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from fastapi.concurrency import run_in_threadpool

from api.resources import ApiState
from api.schemas.live import error_event
from api.services.live_session import LiveSession
from shared.errors import InvalidInput, ParleyError
from shared.services.auth import authenticate
from shared.services.conversations import get_conversation

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/conversations", tags=["live"])

# Close codes (RFC 6455 allows 4000-4999 for applications): said with an ``error`` event first.
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_INVALID = 4422


@router.websocket("/{conversation_id}/live")
async def live(
    ws: WebSocket,
    conversation_id: str,
    speaker: Annotated[int, Query()] = 0,
    api_key: Annotated[str | None, Query()] = None,
) -> None:
    """Text in, audio out: see docs/voice-agents.md. Auth: the bearer key in
    ``Authorization``, or ``?api_key=`` (browsers cannot set a socket's headers)."""
    state: ApiState = ws.app.state.parley
    await ws.accept()
    authorization = ws.headers.get("authorization")
    if not authorization and api_key is not None:
        authorization = f"Bearer {api_key}"
    try:
        owner = await run_in_threadpool(_admit, state, authorization, conversation_id, speaker)
    except ParleyError as exc:
        await ws.send_text(json.dumps(error_event(exc.code, exc.message)))
        close = {401: CLOSE_UNAUTHORIZED, 404: CLOSE_NOT_FOUND}.get(exc.status_code, CLOSE_INVALID)
        await ws.close(code=close, reason=exc.code)
        return
    log.info("live socket opened on conversation %s (speaker %d)", conversation_id, speaker)
    session = LiveSession(state, ws, owner=owner, conversation_id=conversation_id, speaker=speaker)
    await session.run()
    log.info("live socket on conversation %s closed", conversation_id)


def _admit(state: ApiState, authorization: str | None, conversation_id: str, speaker: int) -> str:
    """The owner, once the key is good, the conversation theirs and the speaker valid."""
    with state.reads() as session:
        owner = authenticate(session, authorization, env_keys=state.settings.api_key_list)
        get_conversation(session, owner=owner, conversation_id=conversation_id)
    if not 0 <= speaker <= state.settings.max_speaker:
        raise InvalidInput(
            f"speaker must be between 0 and {state.settings.max_speaker}, got {speaker}",
            code="invalid_speaker",
        )
    return owner
