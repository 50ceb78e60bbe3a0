"""Parley in a Pipecat pipeline (``pip install 'parley[pipecat]'``): one Parley conversation per
call, the caller's speech in it as provided turns and the bot's replies spoken by CSM in that
context.

- :class:`ParleyConversation` is the call's conversation on a Parley server (made on first use)
  and the HTTP client that talks to it. Its posts go out in the order they were asked for, so
  the caller's turn always lands before the reply to it.
- :class:`ParleyUserTurns` is a frame processor placed after the STT service and before the
  user context aggregator. It keeps the caller's input audio of each user turn (from its start
  to the end of the last speech in it, with a little audio from before the start) and, with
  the turn's transcript, posts it as a provided turn. Every frame passes through unchanged.
- :class:`ParleyTTSService` is the pipeline's TTS: each text it is given becomes a generated
  turn of the bot's speaker, streamed back as 24 kHz ``TTSAudioRawFrame`` chunks while it is
  made. An interruption stops the bot's turn on the server first, then closes the stream.

A client of Parley's HTTP API only: it imports the standard library, httpx, numpy and
pipecat, never Parley's server packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

__all__ = [
    "CallerAudio",
    "ParleyConversation",
    "ParleyError",
    "ParleyTTSService",
    "ParleyUserTurns",
    "wav_bytes",
]

PARLEY_SAMPLE_RATE = 24_000  # Parley's audio: 16-bit mono PCM at 24 kHz
MODEL = "csm-1b"


class ParleyError(Exception):
    """A request Parley refused or could not answer; ``str()`` names the server's error."""


def wav_bytes(pcm: bytes, sample_rate: int, num_channels: int = 1) -> bytes:
    """Raw 16-bit little-endian PCM (interleaved when ``num_channels`` > 1) as a WAV file."""
    if sample_rate <= 0 or num_channels <= 0:
        raise ValueError(f"bad audio format: {sample_rate} Hz, {num_channels} channels")
    frame_bytes = 2 * num_channels
    if len(pcm) % frame_bytes:
        raise ValueError(f"{len(pcm)} bytes are not whole {num_channels}-channel 16-bit frames")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(num_channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _error_code(r: httpx.Response) -> str | None:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _describe(r: httpx.Response) -> str:
    try:
        error = r.json()["error"]
        return f"{r.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"


class ParleyConversation:
    """One call's conversation on a Parley server, and the client that talks to it.

    The conversation is made on first use (or ``conversation_id`` names an existing one). Turns
    are posted in the order :meth:`add_user_turn` and :meth:`add_bot_turn` are called: each
    post waits for the ones asked for before it, and the server speaks a conversation's turns in
    the order they were posted, each with the earlier ones as context.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        user_speaker: int = 0,
        bot_speaker: int = 1,
        conversation_id: str | None = None,
        bot_voice: str | None = None,
        max_context_turns: int | None = None,
        params: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """
        Args:
            base_url: the Parley server, e.g. ``http://127.0.0.1:8000``.
            api_key: a Parley key (``pk_…``); None for a server in open mode.
            user_speaker, bot_speaker: the CSM speaker ids of the caller and of the bot.
            conversation_id: an existing conversation to go on with; None makes a new one on
                first use.
            bot_voice: a named Parley voice the bot's speaker is bound to in a new
                conversation.
            max_context_turns: a new conversation's context window, in turns (the server's
                default when None).
            params: turn params of the bot's turns (``temperature``, ``top_k``,
                ``max_audio_length_ms``, ``seed``); the server's defaults where left out.
            timeout: seconds for each request (the audio streams have no read timeout: a
                turn may wait in the queue).
        """
        self.base_url = base_url.rstrip("/")
        self.user_speaker = user_speaker
        self.bot_speaker = bot_speaker
        self.params = dict(params or {})
        self._bot_voice = bot_voice
        self._max_context_turns = max_context_turns
        self._id = conversation_id
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)
        self._create_lock = asyncio.Lock()
        self._tail: asyncio.Task[Any] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    @property
    def id(self) -> str | None:
        """The conversation's id, once it exists."""
        return self._id

    async def ensure(self) -> str:
        """The conversation's id, making the conversation first if there is none yet."""
        async with self._create_lock:
            if self._id is None:
                body: dict[str, Any] = {"metadata": {"source": "pipecat"}}
                if self._max_context_turns is not None:
                    body["max_context_turns"] = self._max_context_turns
                if self._bot_voice is not None:
                    body["speakers"] = {str(self.bot_speaker): self._bot_voice}
                r = await self._http.post("/v1/conversations", json=body)
                if r.status_code != 201:
                    raise ParleyError(f"creating a conversation: {_describe(r)}")
                self._id = str(r.json()["id"])
            return self._id

    def _in_order(self, post: Callable[[], Awaitable[dict[str, Any]]]) -> asyncio.Task[Any]:
        """Run ``post`` once every post asked for before it has finished (succeeded or not)."""
        before = self._tail

        async def run() -> dict[str, Any]:
            if before is not None:
                await asyncio.wait([before])
            return await post()

        task = asyncio.ensure_future(run())
        self._tail = task
        return task

    def add_user_turn(
        self, pcm: bytes, sample_rate: int, num_channels: int, text: str
    ) -> asyncio.Task[Any]:
        """Post the caller's speech (16-bit PCM and its transcript) as a provided turn, after
        every post asked for before. The task's result is the turn (as the server returns it)."""

        async def post() -> dict[str, Any]:
            cid = await self.ensure()
            r = await self._http.post(
                f"/v1/conversations/{cid}/turns",
                data={"speaker": str(self.user_speaker), "text": text},
                files={"audio": ("caller.wav", wav_bytes(pcm, sample_rate, num_channels))},
            )
            if r.status_code != 201:
                raise ParleyError(f"posting the caller's turn: {_describe(r)}")
            return dict(r.json())

        return self._in_order(post)

    def add_bot_turn(self, text: str, params: dict[str, Any] | None = None) -> asyncio.Task[Any]:
        """Post a generated turn of the bot's speaker, after every post asked for before. The
        task's result is the turn, with the ``job_id`` that speaks it."""

        async def post() -> dict[str, Any]:
            cid = await self.ensure()
            body = {"speaker": self.bot_speaker, "text": text, "params": params or self.params}
            r = await self._http.post(f"/v1/conversations/{cid}/turns", json=body)
            if r.status_code != 202:
                raise ParleyError(f"posting the bot's turn: {_describe(r)}")
            return dict(r.json())

        return self._in_order(post)

    @contextlib.asynccontextmanager
    async def stream(self, turn: dict[str, Any]) -> AsyncIterator[AsyncIterator[bytes]]:
        """The turn's audio while it is made: 16-bit mono PCM at 24 kHz, in chunks as they
        come. Raises ParleyError when the turn failed or was cancelled before any audio."""
        cid = await self.ensure()
        path = f"/v1/conversations/{cid}/turns/{turn['id']}/stream"
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", path, params={"format": "pcm"}, timeout=timeout) as r:
            if r.status_code != 200:
                await r.aread()
                raise ParleyError(f"streaming the bot's turn: {_describe(r)}")
            yield r.aiter_bytes()

    async def interrupt(self, job_id: str) -> None:
        """Stop a job of this conversation: the bot was interrupted (barge-in). Its turn keeps
        what was already spoken, marked interrupted, as context for the next turn; a turn not
        yet started is cancelled; a job that has finished already is left as it is."""
        r = await self._http.post(f"/v1/jobs/{job_id}/interrupt")
        if r.status_code == 409 and _error_code(r) == "job_finished":
            return
        if r.status_code != 200:
            raise ParleyError(f"interrupting job {job_id}: {_describe(r)}")

    def interrupt_when_posted(self, post: asyncio.Task[Any]) -> None:
        """Interrupt the job of a bot turn whose post is still on its way (its caller was
        interrupted while waiting): once the server has the turn, stop it."""

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or task.exception() is not None or self._closed:
                return
            self._spawn(self.interrupt(str(task.result()["job_id"])))

        post.add_done_callback(done)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def aclose(self) -> None:
        """Wait for the posts asked for (a caller's last turn included), then close the client.
        Safe to call more than once, and from both processors; the conversation stays on the
        server."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._tail is not None:
            await asyncio.wait([self._tail])
        if self._background:
            await asyncio.wait(list(self._background))
        self._closed = True
        await self._http.aclose()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(f"Parley: {task.exception()}")


class CallerAudio:
    """The caller's audio of one user turn, from 16-bit PCM frames.

    Between turns it keeps the last ``pre_roll_s`` of audio (a VAD reports speech a little
    after it starts). :meth:`start` opens a turn with that audio; :meth:`speech_stopped` marks
    where the caller's speech ended (audio after it is left out unless the caller speaks
    again: :meth:`speech_started`); :meth:`finish` hands the turn's audio over. A turn keeps
    at most its last ``max_turn_s`` (Parley's default upload limit is 120 s).
    """

    def __init__(self, pre_roll_s: float = 0.5, max_turn_s: float = 120.0) -> None:
        self.pre_roll_s = pre_roll_s
        self.max_turn_s = max_turn_s
        self.sample_rate = 0
        self.num_channels = 0
        self.capturing = False
        self._pcm = bytearray()
        self._speech_end: int | None = None

    def add(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        if (sample_rate, num_channels) != (self.sample_rate, self.num_channels):
            if self.capturing and self._pcm:
                logger.warning("Parley: the caller's audio format changed mid-turn; frame dropped")
                return
            self.sample_rate, self.num_channels = sample_rate, num_channels
            self._pcm.clear()
        self._pcm += pcm
        seconds = self.max_turn_s if self.capturing else self.pre_roll_s
        drop = len(self._pcm) - int(seconds * sample_rate) * 2 * num_channels
        if drop > 0:  # only the last max_turn_s of a turn that never ends is kept
            del self._pcm[:drop]
            if self._speech_end is not None:
                self._speech_end = max(0, self._speech_end - drop)

    def start(self) -> None:
        """The user's turn began (the audio kept from before it is its start)."""
        if not self.capturing:
            self.capturing = True
            self._speech_end = None

    def speech_started(self) -> None:
        """The caller speaks (again) within the turn."""
        self.start()
        self._speech_end = None

    def speech_stopped(self) -> None:
        if self.capturing:
            self._speech_end = len(self._pcm)

    def finish(self) -> bytes:
        """The turn's audio (up to the end of its last speech); the buffer starts over."""
        end = len(self._pcm) if self._speech_end is None else self._speech_end
        pcm = bytes(self._pcm[:end])
        self._pcm.clear()
        self.capturing = False
        self._speech_end = None
        return pcm


class ParleyUserTurns(FrameProcessor):
    """Posts each user turn of the call (the caller's audio and transcript) to the
    conversation as a provided turn, and passes every frame on unchanged.

    Place it where both the input audio and the transcriptions flow, and upstream of the user
    context aggregator: after the STT service (which passes audio through by default). A turn
    runs from ``UserStartedSpeakingFrame`` (or ``VADUserStartedSpeakingFrame``, whichever comes
    first) to ``UserStoppedSpeakingFrame`` (which the aggregator sends upstream when the turn
    ends, before the LLM answers); its text is the final ``TranscriptionFrame`` texts received
    meanwhile. A turn that ends before its transcript is posted when the transcript arrives.
    """

    def __init__(
        self,
        conversation: ParleyConversation,
        *,
        pre_roll_s: float = 0.5,
        max_turn_s: float = 120.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            conversation: the call's conversation (shared with :class:`ParleyTTSService`).
            pre_roll_s: seconds of audio from before the start of a turn that go with it.
            max_turn_s: a turn keeps at most its last this many seconds of audio.
            **kwargs: FrameProcessor's own arguments.
        """
        super().__init__(**kwargs)
        self._conversation = conversation
        self._audio = CallerAudio(pre_roll_s, max_turn_s)
        self._texts: list[str] = []
        self._held: tuple[bytes, int, int] | None = None  # a finished turn awaiting its text
        self._posts: set[asyncio.Task[Any]] = set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._audio.add(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._begin()
            self._audio.speech_started()
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._begin()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._audio.speech_stopped()
        elif isinstance(frame, TranscriptionFrame):
            if frame.text.strip():
                self._texts.append(frame.text.strip())
                if self._held is not None and not self._audio.capturing:
                    self._post(*self._held)
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._audio.capturing:
            pcm = self._audio.finish()
            self._held = (pcm, self._audio.sample_rate, self._audio.num_channels)
            if self._texts:
                self._post(*self._held)
        await self.push_frame(frame, direction)

    def _begin(self) -> None:
        if not self._audio.capturing:
            if self._held is not None:
                logger.warning("Parley: a user turn without a transcript was not posted")
                self._held = None
            self._texts.clear()
        self._audio.start()

    def _post(self, pcm: bytes, sample_rate: int, num_channels: int) -> None:
        text = " ".join(self._texts)
        self._texts = []
        self._held = None
        if not pcm:
            logger.warning(f"Parley: the user turn {text!r} has no audio; not posted")
            return
        task = self._conversation.add_user_turn(pcm, sample_rate, num_channels, text)
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)
        task.add_done_callback(_log_failure)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._posts:
            await asyncio.wait(list(self._posts))
        await self._conversation.aclose()


class ParleyTTSService(TTSService):
    """Speaks the bot's text with Parley, in the call's conversation.

    Each text the service is given (a sentence of the LLM's reply, or a ``TTSSpeakFrame``)
    becomes a generated turn of the bot's speaker, posted after the caller's turns before it
    and spoken by CSM with the conversation so far as context; its audio is streamed back as
    ``TTSAudioRawFrame`` chunks while it is made. On an interruption the turn's job is stopped
    on the server, then its stream is closed.
    """

    def __init__(
        self,
        *,
        conversation: ParleyConversation,
        sample_rate: int | None = PARLEY_SAMPLE_RATE,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            conversation: the call's conversation (shared with :class:`ParleyUserTurns`).
            sample_rate: the rate of the audio frames; Parley speaks at 24 kHz, and other
                rates (None: the pipeline's output rate) are resampled here.
            **kwargs: TTSService's own arguments.
        """
        kwargs.setdefault("settings", TTSSettings(model=MODEL, voice=None, language=None))
        super().__init__(
            sample_rate=sample_rate, push_start_frame=True, push_stop_frames=True, **kwargs
        )
        self._conversation = conversation
        self._jobs: dict[str, str] = {}  # context id -> the job of its turn being spoken

    @property
    def conversation(self) -> ParleyConversation:
        return self._conversation

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        post = self._conversation.add_bot_turn(text)
        try:
            turn = await asyncio.shield(post)
        except asyncio.CancelledError:
            self._conversation.interrupt_when_posted(post)
            raise
        except (ParleyError, httpx.HTTPError) as exc:
            yield ErrorFrame(error=f"Parley: {exc}")
            return
        self._jobs[context_id] = str(turn["job_id"])
        await self.start_tts_usage_metrics(text)
        try:
            async with self._conversation.stream(turn) as chunks:
                try:
                    async for frame in self._frames(chunks, context_id):
                        yield frame
                except (asyncio.CancelledError, GeneratorExit):
                    # Interrupted: the turn stops on the server before its stream closes.
                    await self._interrupt(context_id)
                    raise
        except (ParleyError, httpx.HTTPError) as exc:
            if context_id in self._jobs:  # not after an interruption: the turn failed
                yield ErrorFrame(error=f"Parley: {exc}")
        finally:
            self._jobs.pop(context_id, None)

    async def _frames(
        self, chunks: AsyncIterator[bytes], context_id: str
    ) -> AsyncGenerator[TTSAudioRawFrame, None]:
        """The stream's PCM as audio frames, one per chunk (an 80 ms Mimi frame as the server
        sends it), resampled to the service's rate when that is not Parley's."""
        resampler = create_stream_resampler() if self.sample_rate != PARLEY_SAMPLE_RATE else None
        spare = b""
        async for chunk in chunks:
            pcm, spare = spare + chunk, b""
            if len(pcm) % 2:
                pcm, spare = pcm[:-1], pcm[-1:]
            if not pcm:
                continue
            await self.stop_ttfb_metrics()
            if resampler is not None:
                pcm = await resampler.resample(pcm, PARLEY_SAMPLE_RATE, self.sample_rate)
            if pcm:
                yield TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=context_id)
        if resampler is not None:  # the end of the turn: what the filter still holds
            tail = await resampler.flush()
            if tail:
                yield TTSAudioRawFrame(tail, self.sample_rate, 1, context_id=context_id)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        await super().on_audio_context_interrupted(context_id)
        await self._interrupt(context_id)

    async def _interrupt(self, context_id: str) -> None:
        job_id = self._jobs.pop(context_id, None)
        if job_id is None:
            return
        try:
            await asyncio.shield(self._conversation.interrupt(job_id))
        except (ParleyError, httpx.HTTPError) as exc:
            logger.error(f"Parley: {exc}")

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._conversation.aclose()
