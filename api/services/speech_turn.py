"""One ``/v1/audio/speech`` request's turn: started in a fresh or a named conversation, waited
for, its outcome read from SQL, and (for a one-off) its conversation removed afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import DBAPIError

from api.resources import ApiState
from api.schemas.core import TurnCreate
from api.services.conversation_removal import remove_conversation
from api.services.stream_audio import LiveAudio, no_audio_error, stored_pcm16
from api.services.turn_intake import (
    ProvidedAudio,
    store_dialogue,
    store_generated,
    store_generated_in_new_conversation,
)
from shared.db.models import Job, JobStatus, Turn
from shared.errors import NotFound, ParleyError, WaitTimeout

log = logging.getLogger(__name__)

NEW_CONVERSATION = "new"  # as a conversation id: start a conversation that is kept
METADATA = {"source": "/v1/audio/speech"}


@dataclass(frozen=True)
class SpeechTurn:
    conversation_id: str
    turn_id: str
    job_id: str
    # A conversation made for this request alone: removed once the request is answered (or its
    # caller leaves), so one-off requests never pile up against the conversation quota.
    one_off: bool

    def headers(self) -> dict[str, str]:
        """``X-Conversation-ID`` and ``X-Conversation-Turn``, for a conversation that is kept."""
        if self.one_off:
            return {}
        return {"X-Conversation-ID": self.conversation_id, "X-Conversation-Turn": self.turn_id}


@dataclass(frozen=True)
class SpeechOutcome:
    status: str
    error: str | None
    frames: int
    pcm: bytes | None  # the stored audio (16-bit PCM), when asked for and the turn succeeded


def start_turn(
    state: ApiState,
    *,
    owner: str,
    conversation_id: str | None,
    body: TurnCreate,
    voice_id: str | None = None,
) -> SpeechTurn:
    """Store the turn and queue its job: the next turn of the owner's conversation (NotFound
    for another's), or the first of a new one (kept for ``"new"``, one-off for None).
    ``voice_id``: the named voice the turn speaks with (else its speaker's binding)."""
    if conversation_id is None or conversation_id == NEW_CONVERSATION:
        turn = store_generated_in_new_conversation(
            state, owner=owner, body=body, metadata=METADATA, voice_id=voice_id
        )
    else:
        turn = store_generated(
            state, owner=owner, conversation_id=conversation_id, body=body, voice_id=voice_id
        )
    return SpeechTurn(
        conversation_id=turn.conversation_id,
        turn_id=turn.id,
        job_id=turn.job.id,
        one_off=conversation_id is None,
    )


def start_dialogue(
    state: ApiState,
    *,
    owner: str,
    context: list[ProvidedAudio],
    body: TurnCreate,
    metadata: dict[str, str],
) -> SpeechTurn:
    """Store the given turns and the turn to speak after them in a one-off conversation."""
    turn = store_dialogue(state, owner=owner, context=context, body=body, metadata=metadata)
    return SpeechTurn(
        conversation_id=turn.conversation_id, turn_id=turn.id, job_id=turn.job.id, one_off=True
    )


def read_outcome(state: ApiState, turn: SpeechTurn, *, with_audio: bool) -> SpeechOutcome:
    """What SQL says of the turn now; NotFound once its conversation was deleted."""
    with state.reads() as session:
        row = session.get(Turn, turn.turn_id)
        job = session.get(Job, turn.job_id)
        if row is None or job is None:
            raise NotFound(f"turn {turn.turn_id} was deleted (its conversation was deleted)")
        pcm = None
        if with_audio and job.status == JobStatus.SUCCEEDED:
            pcm = stored_pcm16(session, row.id)
        return SpeechOutcome(
            status=job.status, error=job.error_message, frames=row.frames or 0, pcm=pcm
        )


def outcome_error(turn: SpeechTurn, outcome: SpeechOutcome) -> ParleyError:
    """The error for a turn that did not succeed (or has no stored audio)."""
    return no_audio_error(turn.turn_id, outcome.status, outcome.error, stalled="")


async def wait_finished(state: ApiState, turn: SpeechTurn, request: Request) -> bool:
    """Wait (on the job's audio stream, no polling) until the job has finished, whatever its
    outcome; a job put back in the queue after its worker died is waited for again. False when
    the caller left first; WaitTimeout past ``sync_wait_s``."""
    with anyio.move_on_after(state.settings.sync_wait_s):
        while True:
            live = LiveAudio(state, job_id=turn.job_id, turn_id=turn.turn_id)
            try:
                while not live.finished:
                    await live.next()
                    if await request.is_disconnected():
                        return False
            finally:
                await live.close()
            outcome = await run_in_threadpool(read_outcome, state, turn, with_audio=False)
            if JobStatus(outcome.status).finished:
                return True
    raise waited_too_long(state, turn)


async def first_audio(
    state: ApiState, live: LiveAudio, turn: SpeechTurn, request: Request
) -> bytes | None:
    """The first PCM of a live turn (b"" when it ended before any); None when the caller left;
    WaitTimeout past ``sync_wait_s``."""
    first = b""
    with anyio.move_on_after(state.settings.sync_wait_s):
        while not first and not live.finished:
            first = await live.next()
            if not first and await request.is_disconnected():
                return None
        return first
    raise waited_too_long(state, turn)


def waited_too_long(state: ApiState, turn: SpeechTurn) -> WaitTimeout:
    waited = (
        f"turn {turn.turn_id} was not done after {state.settings.sync_wait_s:g} s (sync_wait_s)"
    )
    if turn.one_off:
        return WaitTimeout(f"{waited}; it is cancelled")
    return WaitTimeout(
        f"{waited}; it stays in conversation {turn.conversation_id}: read it there once done"
    )


async def release(state: ApiState, owner: str, turn: SpeechTurn) -> None:
    """Remove a one-off turn's conversation (stopping its job if it still runs). Never raises:
    the caller has its answer already; a failure is logged and the conversation stays."""
    if not turn.one_off:
        return
    with anyio.CancelScope(shield=True):
        try:
            await run_in_threadpool(
                remove_conversation, state, owner=owner, conversation_id=turn.conversation_id
            )
        except NotFound:
            pass  # deleted by its owner meanwhile
        except (DBAPIError, ParleyError) as exc:
            log.warning("could not remove one-off conversation %s: %s", turn.conversation_id, exc)
