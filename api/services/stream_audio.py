"""A turn's audio for a listener: what SQL says about the turn, its stored audio as PCM, and
``LiveAudio``, one listener on a queued or running job's Redis stream with SQL behind it. Used by
the stream route and by the OpenAI speech endpoint."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.resources import ApiState
from api.services.speech_output import StreamRender
from shared.audio import containers as audio
from shared.audio.formats import AudioFormat, StreamEncoder, transcode
from shared.db.models import Job, JobStatus, TurnSource
from shared.errors import Conflict, Unavailable
from shared.redis_io.audio_stream import AudioStreamReader, SegmentMark, StreamRead
from shared.services.conversations import get_conversation
from shared.services.turns import get_media, get_turn

log = logging.getLogger(__name__)

IDLE_CHECK_MS = 1000  # how long a quiet stream is waited on before SQL is asked again


@dataclass(frozen=True)
class TurnState:
    """What SQL says about a turn when a listener asks: its job's state, and its stored audio
    (16-bit PCM) when it is to be served as it is."""

    job_id: str | None
    status: str
    error: str | None
    flac: bytes | None


@dataclass(frozen=True)
class JobState:
    status: str
    worker: str | None


def turn_state(state: ApiState, *, owner: str, conversation_id: str, turn_id: str) -> TurnState:
    """Raises NotFound for an unknown turn and for another owner's."""
    with state.reads() as session:
        get_conversation(session, owner=owner, conversation_id=conversation_id)
        turn = get_turn(session, conversation_id=conversation_id, turn_id=turn_id)
        job = turn.job
        flac = None
        if turn.source == TurnSource.PROVIDED or turn.status == JobStatus.SUCCEEDED:
            media = get_media(session, turn_id=turn.id)
            flac = media.audio_flac if media is not None else None
        return TurnState(
            job_id=job.id if job else None,
            status=job.status if job else turn.status,
            error=job.error_message if job else None,
            flac=flac,
        )


def stored_pcm16(session: Session, turn_id: str) -> bytes | None:
    """A turn's stored audio as 16-bit PCM bytes, or None when it has none."""
    media = get_media(session, turn_id=turn_id)
    if media is None or media.audio_flac is None:
        return None
    return audio.pcm16_bytes(audio.decode_flac_pcm16(media.audio_flac))


def _stored_pcm(state: ApiState, turn_id: str) -> bytes | None:
    with state.reads() as session:
        return stored_pcm16(session, turn_id)


def _job_state(state: ApiState, job_id: str) -> JobState | None:
    with state.reads() as session:
        job = session.get(Job, job_id)
        return None if job is None else JobState(status=job.status, worker=job.worker)


def stored_body(flac: bytes, fmt: AudioFormat) -> bytes:
    """A finished turn's audio: pcm and wav shaped as their stream (wav with its open-length
    header), other formats as the whole file ``…/audio`` serves (it carries its length, and an
    mp3 its gapless tag)."""
    encoder = StreamEncoder(fmt)
    if not encoder.passthrough:
        return transcode(flac, fmt)
    return encoder.feed(audio.pcm16_bytes(audio.decode_flac_pcm16(flac))) + encoder.finish()


def no_audio_error(
    turn_id: str, status: str, error: str | None, *, stalled: str = " before any audio"
) -> Conflict | Unavailable:
    """The error for a turn that ended (or stalled) with no audio to give."""
    if status == JobStatus.FAILED:
        message = f"turn {turn_id} failed: {error or 'no reason given'}"
        return Conflict(message, code="turn_failed")
    if status == JobStatus.CANCELLED:
        return Conflict(f"turn {turn_id} was cancelled", code="turn_cancelled")
    if status == JobStatus.SUCCEEDED:
        return Conflict(f"turn {turn_id} has no stored audio", code="no_audio")
    return Unavailable(
        f"turn {turn_id} is {status} but its worker stopped{stalled}", code="worker_lost"
    )


class LiveAudio:
    """One listener on a queued or running job: its Redis stream, with SQL behind it.

    Owns a Redis connection of its own (a blocking read holds one), closed by :meth:`close`.
    """

    def __init__(self, state: ApiState, *, job_id: str, turn_id: str) -> None:
        self._state = state
        self._job_id = job_id
        self._turn_id = turn_id
        self._redis = state.settings.redis.async_client(
            socket_timeout=IDLE_CHECK_MS / 1000 + 10,
            socket_connect_timeout=5,
        )
        self._reader = AudioStreamReader(self._redis, state.keys.job_audio(job_id))
        self.sent_bytes = 0
        self.finished = False
        self.marks: list[SegmentMark] = []  # segment ends read, each after its audio
        self._judge_workers_at = 0.0  # a missing heartbeat means a dead worker from then on

    async def next(self) -> bytes:
        """The next PCM: what the stream holds, else (after a quiet second) b"" while the job
        goes on. Sets ``finished`` at the end; a job that succeeded without this listener
        seeing its end (stream expired) is completed from the stored audio."""
        if self.finished:
            return b""
        try:
            got = await self._reader.read(block_ms=IDLE_CHECK_MS)
        except RedisError as exc:  # Redis away: the rest comes from SQL once the turn is stored
            if not self._reader.gap:
                log.warning("job %s: stream lost Redis (%s); rest from SQL", self._job_id, exc)
            self._reader.gap = True
            # A Redis that comes back empty lacks heartbeats until workers beat again.
            self._judge_workers_at = time.monotonic() + 3 * self._state.settings.worker_heartbeat_s
            await anyio.sleep(IDLE_CHECK_MS / 1000)
            got = StreamRead(b"", None)
        if got.segment is not None:
            self.marks.append(got.segment)
        if got.pcm or got.end is not None or got.segment is not None:
            self.finished = got.end is not None
            self.sent_bytes += len(got.pcm)
            short = self._reader.gap or (got.total_bytes or 0) > self.sent_bytes
            if got.end == JobStatus.SUCCEEDED and short:  # Redis lost part of the stream
                return got.pcm + await self._stored_rest()
            return got.pcm
        job = await run_in_threadpool(_job_state, self._state, self._job_id)
        if job is None or JobStatus(job.status).finished:
            self.finished = True
            if job is None or job.status != JobStatus.SUCCEEDED:
                return b""
            return await self._stored_rest()
        if (
            job.status == JobStatus.RUNNING
            and job.worker is not None
            and time.monotonic() >= self._judge_workers_at
        ):
            with contextlib.suppress(RedisError):  # unknown while Redis is away: keep waiting
                self.finished = not await self._redis.exists(self._state.keys.worker(job.worker))
        elif job.status == JobStatus.QUEUED and self.sent_bytes:
            self.finished = True  # requeued after its worker died: this attempt's audio ended
        return b""

    async def _stored_rest(self) -> bytes:
        """The stored audio after what this listener got (always a prefix of it)."""
        stored = await run_in_threadpool(_stored_pcm, self._state, self._turn_id)
        rest = (stored or b"")[self.sent_bytes :]
        self.sent_bytes += len(rest)
        return rest

    async def body(self, first: bytes, fmt: AudioFormat) -> AsyncIterator[bytes]:
        """The response body in ``fmt``: the first audio, then the rest as it comes.
        Compressed formats are encoded in a worker thread, off the event loop."""
        render = StreamRender(fmt, 1.0)
        try:
            yield await render.feed_off_loop(first)
            while not self.finished:
                pcm = await self.next()
                if pcm and (data := await render.feed_off_loop(pcm)):
                    yield data
            if tail := await render.finish_off_loop():
                yield tail
        finally:
            await self.close()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._redis.aclose()
