"""One live socket (``/v1/conversations/{cid}/live``): text in as it is written, audio out as
it is spoken.

The client's ``text`` messages go into the open turn's :class:`~shared.sentences.SentenceBuffer`;
each sentence is handed to the turn's worker (``shared.redis_io.live_text``) as soon as it is
complete, so speaking starts before the turn's text is whole. The turn is stored when its first
text that is not blank comes (``turn.started``), as a live generated turn in the conversation's
order, like a REST turn. ``end`` flushes the rest and closes the turn's text; the next ``text``
opens the next turn. ``cancel`` (barge-in) interrupts every turn of the socket not yet done: the
one speaking keeps what was sent, later ones are dropped. A socket that closes does the same.

One task relays audio: the turns' audio streams one after another, in order, as binary frames,
with ``segment.done`` after each segment's audio and ``turn.done`` at each turn's end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import WebSocket
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from api.resources import ApiState
from api.schemas.core import TurnCreate, TurnParams
from api.schemas.live import (
    CLIENT_MESSAGE,
    CancelMessage,
    EndMessage,
    TextMessage,
    error_event,
    event,
)
from api.services import job_control
from api.services.stream_audio import LiveAudio
from api.services.turn_intake import describe_validation_error, store_generated
from shared.contract.segments import interrupted, segments_from_json
from shared.contract.states import JobStatus
from shared.db.models import Job, Turn
from shared.errors import Conflict, InvalidInput, ParleyError
from shared.redis_io.live_text import append_text
from shared.sentences import SentenceBuffer

log = logging.getLogger(__name__)


@dataclass
class LiveTurn:
    """A turn of this socket: open while it takes text, then speaking until its end is
    relayed."""

    params: TurnParams | None
    buffer: SentenceBuffer = field(default_factory=SentenceBuffer)
    chars: int = 0
    turn_id: str | None = None  # set once stored (at its first text that is not blank)
    job_id: str | None = None
    done: bool = False  # its turn.done was sent
    interrupted: bool = False


class LiveSession:
    """The socket's state; :meth:`run` serves it until the client leaves."""

    def __init__(
        self, state: ApiState, ws: WebSocket, *, owner: str, conversation_id: str, speaker: int
    ) -> None:
        """A session of ``owner`` on their conversation, speaking as ``speaker``."""
        self._state = state
        self._ws = ws
        self._owner = owner
        self._conversation_id = conversation_id
        self._speaker = speaker
        self._open: LiveTurn | None = None
        self._turns: list[LiveTurn] = []  # stored turns, in order
        self._send_lock = anyio.Lock()
        self._to_relay, self._relay_queue = anyio.create_memory_object_stream[LiveTurn](1000)

    async def run(self) -> None:
        """Take messages until the socket closes; then interrupt what is not done."""
        try:
            async with self._to_relay, self._relay_queue, anyio.create_task_group() as tasks:
                tasks.start_soon(self._relay)
                await self._receive()
                tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._interrupt_all(reason="the socket closed")

    async def _receive(self) -> None:
        while True:
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await self._error(
                    "binary_not_accepted",
                    "send JSON text messages; audio only comes from the server",
                )
                continue
            try:
                parsed = CLIENT_MESSAGE.validate_json(message.get("text") or "")
            except ValidationError as exc:
                await self._error("invalid_message", describe_validation_error(exc))
                continue
            try:
                if isinstance(parsed, TextMessage):
                    await self._text(parsed)
                elif isinstance(parsed, EndMessage):
                    await self._end(parsed)
                elif isinstance(parsed, CancelMessage):
                    await self._interrupt_all(reason="the client cancelled")
            except ParleyError as exc:
                await self._error(exc.code, str(exc))

    async def _text(self, message: TextMessage) -> None:
        self._check_turn_id(message.turn_id)
        turn = self._open
        chars = (turn.chars if turn else 0) + len(message.text)
        limit = self._state.settings.max_text_chars
        if chars > limit:
            raise InvalidInput(
                f"the turn's text would be {chars} characters; the limit is {limit} "
                "(max_text_chars); this text was not taken",
                code="text_too_long",
            )
        if "\x00" in message.text:
            raise InvalidInput("text contains a NUL character", code="invalid_text")
        if turn is None:
            turn = self._open = LiveTurn(params=message.params)
        elif turn.turn_id is None and message.params is not None:
            turn.params = message.params  # not stored yet: the turn starts with this text
        turn.chars = chars
        segments = turn.buffer.feed(message.text)
        if turn.turn_id is None:
            so_far = " ".join([*segments, turn.buffer.pending]).strip()
            if not so_far:
                return  # blank so far: nothing to store yet
            # Stored (and its job sent) at its first text, so the worker is ready to speak the
            # first sentence the moment it is complete.
            await self._store(turn, so_far)
        if segments:
            await self._send_text(turn, segments, end=False)

    async def _end(self, message: EndMessage) -> None:
        self._check_turn_id(message.turn_id)
        turn = self._open
        if turn is None:
            raise InvalidInput("no turn is open: send text first", code="no_turn")
        self._open = None
        segments = turn.buffer.flush()
        if turn.turn_id is None:
            if not segments:
                raise InvalidInput(
                    "the turn's text is empty; nothing was stored", code="empty_text"
                )
            await self._store(turn, " ".join(segments))
        await self._send_text(turn, segments, end=True)

    def _check_turn_id(self, turn_id: str | None) -> None:
        if turn_id is None:
            return
        if self._open is not None and self._open.turn_id == turn_id:
            return
        if any(t.turn_id == turn_id for t in self._turns):
            raise InvalidInput(
                f"turn {turn_id} has ended; it takes no more text", code="turn_ended"
            )
        raise InvalidInput(f"turn {turn_id} is not open on this socket", code="unknown_turn")

    async def _store(self, turn: LiveTurn, text: str) -> None:
        body = TurnCreate(speaker=self._speaker, text=text, params=turn.params or TurnParams())
        try:
            stored: Turn = await run_in_threadpool(
                store_generated,
                self._state,
                owner=self._owner,
                conversation_id=self._conversation_id,
                body=body,
                live=True,
            )
        except ParleyError:
            self._open = None  # nothing was stored: the next text starts afresh
            raise
        turn.turn_id, turn.job_id = stored.id, stored.job.id
        self._turns.append(turn)
        await self._send(
            event("turn.started", turn_id=stored.id, job_id=stored.job.id, index=stored.index)
        )
        await self._to_relay.send(turn)

    async def _send_text(self, turn: LiveTurn, segments: list[str], *, end: bool) -> None:
        assert turn.job_id is not None
        key = self._state.keys.job_text(turn.job_id)
        try:
            taken = await run_in_threadpool(append_text, self._state.redis, key, segments, end=end)
        except RedisError as exc:
            log.warning("job %s: live text not sent (%s); interrupting the turn", turn.job_id, exc)
            await self._interrupt(turn)
            raise InvalidInput(
                f"the turn's text could not be passed on (Redis: {exc}); it was interrupted",
                code="redis_unavailable",
            ) from exc
        if not taken:  # the worker stopped waiting for it, or an interrupt came first
            self._close(turn)
            raise InvalidInput(
                f"turn {turn.turn_id} has ended and takes no more text; this text was not "
                "taken (send it again to start the next turn)",
                code="turn_ended",
            )

    def _close(self, turn: LiveTurn) -> None:
        """The turn takes no more text: the next text opens the next turn."""
        if self._open is turn:
            self._open = None

    async def _interrupt_all(self, *, reason: str) -> None:
        """Interrupt every stored turn not yet done; forget the open turn's text."""
        self._open = None
        for turn in self._turns:
            if not turn.done and not turn.interrupted:
                log.info("job %s: interrupted: %s", turn.job_id, reason)
                await self._interrupt(turn)

    async def _interrupt(self, turn: LiveTurn) -> None:
        turn.interrupted = True
        assert turn.job_id is not None
        try:
            await run_in_threadpool(self._interrupt_job, turn.job_id)
        except Conflict:
            pass  # it finished meanwhile: nothing to stop
        except ParleyError as exc:
            log.warning("job %s: could not interrupt: %s", turn.job_id, exc)

    def _interrupt_job(self, job_id: str) -> None:
        with self._state.sessions() as session:
            job_control.interrupt(
                self._state, session, conversation_id=self._conversation_id, job_id=job_id
            )

    async def _relay(self) -> None:
        """Each stored turn's audio in order, its segments' ends, then its end. Ends when the
        client has gone (a send fails)."""
        try:
            await self._relay_turns()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            log.info("live socket: the client went away while audio was sent (%s)", exc)

    async def _relay_turns(self) -> None:
        async for turn in self._relay_queue:
            assert turn.job_id is not None and turn.turn_id is not None
            live = LiveAudio(self._state, job_id=turn.job_id, turn_id=turn.turn_id)
            try:
                while not live.finished:
                    pcm = await live.next()
                    if pcm:
                        await self._send_bytes(pcm)
                    for mark in live.marks:
                        await self._send(
                            event(
                                "segment.done",
                                turn_id=turn.turn_id,
                                index=mark.index,
                                **mark.segment.to_json(),
                            )
                        )
                    live.marks.clear()
            finally:
                await live.close()
            done = await run_in_threadpool(self._turn_done, turn.turn_id, turn.job_id)
            turn.done = True
            await self._send(done)
            if self._open is turn:  # it ended before the client ended it (idle, or failed)
                self._close(turn)
                if pending := turn.buffer.pending.strip():
                    await self._error(
                        "turn_ended",
                        f"turn {turn.turn_id} ended before its text did; not spoken: {pending!r}",
                    )

    def _turn_done(self, turn_id: str, job_id: str) -> dict[str, Any]:
        with self._state.reads() as session:
            row = session.get(Turn, turn_id)
            job = session.get(Job, job_id)
            if row is None or job is None:
                return event("turn.done", turn_id=turn_id, job_id=job_id, status="deleted")
            fields: dict[str, Any] = {
                "turn_id": turn_id,
                "job_id": job_id,
                "status": job.status,
                "interrupted": interrupted(segments_from_json(row.segments)),
                "frames": row.frames or 0,
                "text": row.text,
            }
            if job.error_code:
                fields["error"] = {"code": job.error_code, "message": job.error_message or ""}
            elif not JobStatus(job.status).finished:  # its worker stopped mid-turn
                fields["error"] = {
                    "code": "worker_lost",
                    "message": f"turn {turn_id}'s worker stopped while it spoke; recovery runs "
                    f"it again from its start (see GET /v1/jobs/{job_id}), not on this socket",
                }
            return event("turn.done", **fields)

    async def _error(self, code: str, message: str) -> None:
        await self._send(error_event(code, message))

    async def _send(self, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._ws.send_text(json.dumps(payload))

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self._ws.send_bytes(data)
