"""The Pipecat extra (``parley/pipecat.py``) in a real Pipecat pipeline, with no network
transport: frames are queued into a ``PipelineWorker`` and run through ``ParleyUserTurns`` and
``ParleyTTSService`` against a live Parley (uvicorn and a real worker on the tiny checkpoint).
The caller's turn lands in the conversation before the bot's reply, with its own audio and
transcript, encoded; the audio frames the pipeline emits are the bot turn's stored audio, byte
for byte; an interruption stops the bot's turn on the server and no audio follows it; and with
Pipecat's own user aggregator in the pipeline, its end of the user's turn posts the caller's
turn and the caller speaking over the bot interrupts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import (
    SpeechTimeoutUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from parley.pipecat import ParleyConversation, ParleyTTSService, ParleyUserTurns, wav_bytes
from shared.audio.containers import decode_upload, pcm16_bytes, to_pcm16
from tests.sounds import chirp
from tests.stack import FINISHED, RUNNING_MS, Stack, running_stack

IN_RATE = 16_000  # the caller's audio, as a telephony or WebRTC transport would give it
CHUNK = IN_RATE // 50  # 20 ms input frames
SHORT = {"temperature": 0, "max_audio_length_ms": 800}  # at most 10 frames
PRE_ROLL_S = 0.2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    # A client of the HTTP API: one database kind is enough.
    tmp = tmp_path_factory.mktemp("pipecat-sqlite")
    with running_stack("sqlite", tmp, tiny_model_dir) as s:
        yield s


class Sink(FrameProcessor):
    """The end of the pipeline: every frame that comes out after the StartFrame, in order (a
    StartFrame's repr reads its deprecated fields, and pipecat warns of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and not isinstance(frame, StartFrame):
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    async def wait_for(self, kind: type[Frame], count: int = 1, timeout: float = 60) -> None:
        async def seen() -> None:
            while sum(isinstance(f, kind) for f in self.frames) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(seen(), timeout)

    def audio(self) -> bytes:
        return b"".join(f.audio for f in self.frames if isinstance(f, TTSAudioRawFrame))


class Call:
    """One call: a pipeline of ParleyUserTurns → ParleyTTSService → Sink, run by a WorkerRunner
    (no transport), with frames queued at its start."""

    def __init__(
        self, conversation: ParleyConversation, *middle: FrameProcessor, out_rate: int = 24_000
    ) -> None:
        self.conversation = conversation
        self.tts = ParleyTTSService(conversation=conversation, sample_rate=out_rate)
        self.sink = Sink()
        user_turns = ParleyUserTurns(conversation, pre_roll_s=PRE_ROLL_S)
        pipeline = Pipeline([user_turns, *middle, self.tts, self.sink])
        self.worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=24_000),
            cancel_on_idle_timeout=False,
            enable_rtvi=False,
        )
        self.started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker: Any, frame: Frame) -> None:
            self.started.set()

        self.runner = WorkerRunner(handle_sigint=False)
        self._run: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Call:
        await self.runner.add_workers(self.worker)
        self._run = asyncio.ensure_future(self.runner.run())
        await asyncio.wait_for(self.started.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.queue_frame(EndFrame())
        assert self._run is not None
        await asyncio.wait_for(self._run, 60)

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)


def pcm16(samples: np.ndarray) -> bytes:
    return pcm16_bytes(to_pcm16(samples))


def audio_frames(pcm: bytes) -> list[InputAudioRawFrame]:
    step = 2 * CHUNK
    return [InputAudioRawFrame(pcm[i : i + step], IN_RATE, 1) for i in range(0, len(pcm), step)]


def stored_pcm(stack: Stack, cid: str, tid: str) -> bytes:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=pcm")
    assert r.status_code == 200, r.text
    return r.content


def finished_turns(stack: Stack, cid: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
        if len(turns) == count and all(t["status"] in FINISHED for t in turns):
            return list(turns)
        assert time.monotonic() < deadline, turns
        time.sleep(0.05)


def test_a_call_puts_the_callers_turn_then_the_bots_reply_in_one_conversation(
    stack: Stack, server: str
) -> None:
    before = pcm16(0.05 * np.random.default_rng(1).standard_normal(int(0.3 * IN_RATE)))
    speech = pcm16(chirp(1.0, IN_RATE, seed=2))
    pause = bytes(2 * int(0.2 * IN_RATE))
    question, answer = "Hey, how was the trip?", "Long, but worth it."

    async def call() -> tuple[ParleyConversation, bytes, list[Frame]]:
        conversation = ParleyConversation(server, params=SHORT)
        async with Call(conversation) as c:
            await c.send(*audio_frames(before))
            await c.send(VADUserStartedSpeakingFrame(), UserStartedSpeakingFrame())
            await c.send(*audio_frames(speech))
            await c.send(TranscriptionFrame(question, "caller", "2026-01-01T00:00:00Z"))
            await c.send(VADUserStoppedSpeakingFrame(), *audio_frames(pause))
            # The aggregator's end of the user's turn, then at once the bot's reply.
            await c.send(UserStoppedSpeakingFrame(), TTSSpeakFrame(answer))
            await c.sink.wait_for(TTSStoppedFrame)
        return conversation, c.sink.audio(), c.sink.frames

    conversation, heard, frames = asyncio.run(call())
    cid = conversation.id
    assert cid is not None
    user, bot = finished_turns(stack, cid, 2)

    # The caller's turn: their transcript, and their audio from just before the VAD's start to
    # the end of their speech (the pause after it left out), as the server decodes it.
    assert (user["source"], user["speaker"], user["text"], user["status"]) == (
        "provided",
        0,
        question,
        "succeeded",
    )
    sent = before[-2 * int(PRE_ROLL_S * IN_RATE) :] + speech
    want = pcm16(decode_upload(wav_bytes(sent, IN_RATE), max_duration_ms=60_000))
    assert stored_pcm(stack, cid, user["id"]) == want
    codes = stack.client.get(f"/v1/conversations/{cid}/turns/{user['id']}/codes").json()
    assert codes["frames"] == user["frames"] > 0  # encoded by the worker: it is context

    # The bot's turn, spoken after it; what the pipeline played is its stored audio exactly.
    assert (bot["source"], bot["speaker"], bot["text"], bot["status"]) == (
        "generated",
        1,
        answer,
        "succeeded",
    )
    assert bot["params"]["max_audio_length_ms"] == 800 and bot["index"] > user["index"]
    assert heard and heard == stored_pcm(stack, cid, bot["id"])
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(24_000, 1)}


def test_an_interruption_stops_the_bots_turn_and_its_audio(stack: Stack, server: str) -> None:
    long = {"temperature": 0, "max_audio_length_ms": RUNNING_MS}

    async def call() -> tuple[ParleyConversation, list[Frame], int, dict[str, Any]]:
        conversation = ParleyConversation(server, params=long)
        async with Call(conversation) as c:
            await c.send(TTSSpeakFrame("A long answer, which the caller cuts off."))
            await c.sink.wait_for(TTSAudioRawFrame)
            await c.send(InterruptionFrame())
            await c.sink.wait_for(InterruptionFrame)
            cut = len(c.sink.frames)
            # The job is no longer running by the time the interruption has gone through.
            cid = conversation.id
            assert cid is not None
            turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
            job = stack.client.get(f"/v1/jobs/{turns[0]['job_id']}").json()
            await asyncio.sleep(1.0)  # a running turn would have sent more audio by now
            conversation.params = SHORT  # the call goes on: a short reply
            await c.send(TTSSpeakFrame("Sorry, go on."))
            await c.sink.wait_for(TTSStoppedFrame)
        return conversation, c.sink.frames, cut, job

    conversation, frames, cut, job = asyncio.run(call())
    cid = conversation.id
    assert cid is not None
    # Interrupted (barge-in): the job stops within a frame of the interruption.
    assert job["status"] in ("running", "succeeded"), job
    assert isinstance(frames[cut - 1], InterruptionFrame)
    cut_off = {f.context_id for f in frames[:cut] if isinstance(f, TTSAudioRawFrame)}
    after = [f for f in frames[cut:] if isinstance(f, TTSAudioRawFrame)]
    # Nothing of the interrupted turn follows the interruption: the next audio is the reply's.
    assert len(cut_off) == 1 and after and not cut_off & {f.context_id for f in after}
    interrupted, next_turn = finished_turns(stack, cid, 2)
    # It keeps what was spoken (context for the reply): the pipeline played a prefix of it.
    assert interrupted["status"] == "succeeded" and interrupted["interrupted"], interrupted
    assert 0 < interrupted["frames"] < RUNNING_MS // 80
    played = b"".join(f.audio for f in frames[:cut] if isinstance(f, TTSAudioRawFrame))
    assert played and stored_pcm(stack, cid, interrupted["id"]).startswith(played)
    assert next_turn["status"] == "succeeded"
    assert b"".join(f.audio for f in after) == stored_pcm(stack, cid, next_turn["id"])


def test_pipecats_user_aggregator_ends_the_callers_turn_and_barges_in(
    stack: Stack, server: str
) -> None:
    """With Pipecat's own user aggregator after ParleyUserTurns (as in a bot), the aggregator's
    end of the user's turn (sent upstream) posts the caller's turn before the LLM is asked, and
    the caller speaking over the bot interrupts the bot's turn."""
    speech = pcm16(chirp(0.6, IN_RATE, seed=3))
    question, answer = "What time is it?", "It is late, and it goes on and on."

    async def call() -> tuple[ParleyConversation, list[Frame], dict[str, Any]]:
        conversation = ParleyConversation(
            server, params={"temperature": 0, "max_audio_length_ms": RUNNING_MS}
        )
        stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.2)
        aggregator = LLMUserAggregator(
            LLMContext(),
            params=LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(stop=[stop])),
        )
        async with Call(conversation, aggregator) as c:
            await c.send(VADUserStartedSpeakingFrame(), *audio_frames(speech))
            await c.send(TranscriptionFrame(question, "caller", "2026-01-01T00:00:00Z"))
            await c.send(VADUserStoppedSpeakingFrame())
            await c.sink.wait_for(LLMContextFrame)  # the aggregator asks the LLM: we answer
            await c.send(TTSSpeakFrame(answer))
            await c.sink.wait_for(TTSAudioRawFrame)
            await c.send(VADUserStartedSpeakingFrame(), *audio_frames(speech[:6400]))
            # The aggregator interrupts at each start of the user's turn: this is the second.
            await c.sink.wait_for(InterruptionFrame, 2)
            cid = conversation.id
            assert cid is not None
            turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
            job = stack.client.get(f"/v1/jobs/{turns[1]['job_id']}").json()
            await asyncio.sleep(0.5)
        return conversation, c.sink.frames, job

    conversation, frames, job = asyncio.run(call())
    cid = conversation.id
    assert cid is not None
    user, bot = finished_turns(stack, cid, 2)
    assert (user["source"], user["text"], user["status"]) == ("provided", question, "succeeded")
    assert (bot["source"], bot["text"], bot["status"]) == ("generated", answer, "succeeded")
    assert bot["interrupted"] and 0 < bot["frames"] < RUNNING_MS // 80, bot
    assert job["status"] in ("running", "succeeded"), job
    cut = max(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not any(isinstance(f, TTSAudioRawFrame) for f in frames[cut:])


def test_audio_at_another_rate_is_resampled(stack: Stack, server: str) -> None:
    async def call() -> tuple[ParleyConversation, list[Frame]]:
        conversation = ParleyConversation(server, params=SHORT)
        async with Call(conversation, out_rate=16_000) as c:
            await c.send(TTSSpeakFrame("At sixteen kilohertz."))
            await c.sink.wait_for(TTSStoppedFrame)
        return conversation, c.sink.frames

    conversation, frames = asyncio.run(call())
    assert conversation.id is not None
    (turn,) = finished_turns(stack, conversation.id, 1)
    stored = len(stored_pcm(stack, conversation.id, turn["id"])) // 2
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(16_000, 1)}
    heard = sum(f.num_frames for f in audio)
    assert abs(heard - stored * 2 // 3) <= 2  # the whole turn, its tail flushed
