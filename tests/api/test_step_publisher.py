"""The step publisher with the real engine (tiny checkpoint) and a Redis server of the test's own.

Several turns run at once in the engine's frame loop, each from its own thread as a worker's
task threads do, each with a :class:`TurnAudio` on the one :class:`StepPublisher`. Redis's own
command counters show what went over the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from redis import Redis

from shared.redis_io.audio_stream import PCM_FIELD, AudioStreamWriter
from tests.servers import OwnRedis
from worker.engine.csm import SamplingParams
from worker.silence import SilenceGuard, frame_dbfs
from worker.step_publisher import StepPublisher
from worker.turn_audio import TurnAudio


@pytest.fixture
def redis(own_redis: OwnRedis) -> Iterator[Redis]:
    client = Redis.from_url(own_redis.url, socket_timeout=5, socket_connect_timeout=1)
    yield client
    client.close()


@pytest.fixture
def publisher(redis: Redis) -> Iterator[StepPublisher]:
    publisher = StepPublisher(redis)
    publisher.start()
    yield publisher
    publisher.stop()


@dataclass
class Turn:
    """One turn's thread: its TurnAudio, what ``on_frame`` answered, what ``finish`` gave."""

    audio: TurnAudio
    answers: list[bool] = field(default_factory=list)
    codes: np.ndarray | None = None
    pcm: np.ndarray | None = None
    error: BaseException | None = None


def make_turn(
    publisher: StepPublisher, redis: Redis, i: int, guard: SilenceGuard | None = None
) -> Turn:
    return Turn(
        TurnAudio(
            publisher=publisher,
            stream=AudioStreamWriter(redis, f"t:{i}:audio", maxlen=1000),
            guard=guard,
            frames_key=f"t:{i}:frames",
            cancel_key=f"t:{i}:cancel",
        )
    )


def speak(
    engine: Any,
    turns: list[Turn],
    frames: int,
    before_frame: Callable[[int, int], None] = lambda i, k: None,
) -> None:
    """Run every turn at once (greedy, ``frames`` frames), each in its own thread;
    ``before_frame(i, k)`` runs in turn ``i``'s thread before its frame ``k`` (from 1) is
    published."""

    def run(i: int, turn: Turn) -> None:
        def on_frame(frame: np.ndarray, samples: np.ndarray) -> bool:
            before_frame(i, turn.audio.generated + 1)
            answer = turn.audio.on_frame(frame, samples)
            turn.answers.append(answer)
            return answer

        try:
            params = SamplingParams(temperature=0, top_k=50, max_frames=frames)
            engine.generate([], i % 2, f"Turn number {i} speaks.", params, on_frame=on_frame)
            if not turn.audio.cancelled:
                turn.audio.end_segment()
                turn.codes, turn.pcm = turn.audio.result()
        except BaseException as exc:
            turn.error = exc

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(turns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert [t.error for t in turns] == [None] * len(turns)


def calls(redis: Redis) -> dict[str, int]:
    """Calls so far of each Redis command (``INFO commandstats``)."""
    stats = redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def streamed(redis: Redis, i: int) -> bytes:
    return b"".join(f[PCM_FIELD] for _, f in redis.xrange(f"t:{i}:audio") if PCM_FIELD in f)


def test_every_turns_writes_go_in_one_pipeline_per_step(
    engine: Any, redis: Redis, publisher: StepPublisher
) -> None:
    n, frames = 6, 24
    turns = [make_turn(publisher, redis, i) for i in range(n)]
    before, steps_before = calls(redis), sum(engine.batcher.steps_by_rows)
    speak(engine, turns, frames)
    after, steps = calls(redis), sum(engine.batcher.steps_by_rows) - steps_before

    def delta(command: str) -> int:
        return after.get(command, 0) - before.get(command, 0)

    # Every frame of every turn was published: its progress, its chunk...
    assert delta("xadd") == n * frames
    assert delta("set") == n * (frames + 1)  # one count per frame, one at the end
    assert delta("exists") == 0
    # ... and the cancel flags of all turns were read with one MGET per pipeline: about one
    # pipeline per frame-loop step, where one round trip per turn per frame would be n a step.
    # A turn whose thread comes later than the round's gather window (a loaded machine) goes
    # in a pipeline of its own, so allow some: 29 for 25 steps was seen under a full suite.
    assert frames <= steps <= frames + n
    assert frames <= delta("mget") <= steps * 3 // 2, (delta("mget"), steps)
    assert publisher.rows / publisher.pipelines >= n / 2
    for i, turn in enumerate(turns):
        assert turn.codes is not None and turn.pcm is not None
        assert turn.codes.shape[0] == frames and turn.answers == [False] * frames
        assert streamed(redis, i) == turn.pcm.tobytes()  # streamed audio = stored audio
        assert int(redis.get(f"t:{i}:frames") or 0) == frames
        assert turn.audio.first_audio_at is not None


def test_silent_tails_are_judged_over_the_batch_as_alone(
    engine: Any, redis: Redis, publisher: StepPublisher
) -> None:
    """The tiny model's random codec speaks at about -2.5 dBFS: with a -1 dBFS threshold every
    frame is silent, so each turn stops at its 6th frame and keeps its first 2."""
    n, frames = 4, 20

    def guard() -> SilenceGuard:
        return SilenceGuard(threshold_dbfs=-1.0, tail_frames=6, keep_frames=2)

    turns = [make_turn(publisher, redis, i, guard()) for i in range(n)]
    speak(engine, turns, frames)
    for i, turn in enumerate(turns):
        assert turn.answers == [False] * 5 + [True]
        assert turn.audio.generated == 6 and turn.audio.guard is not None
        assert turn.audio.guard.dropped_frames == 4
        assert turn.codes is not None and turn.pcm is not None
        assert turn.codes.shape[0] == 2 and turn.pcm.shape == (2 * 1920,)
        assert streamed(redis, i) == turn.pcm.tobytes()
        # The same frames through a guard of their own, measured one by one, decide the same.
        alone = guard()
        heard = [turn.pcm[k * 1920 : (k + 1) * 1920] / 32768.0 for k in range(2)]
        assert all(frame_dbfs(h) < -1.0 for h in heard)
        assert all(alone.push(c, h) for c, h in zip(turn.codes, heard, strict=True))


def test_a_cancel_flag_stops_its_turn_at_the_next_frame_and_no_other(
    engine: Any, redis: Redis, publisher: StepPublisher
) -> None:
    n, frames, cancel_before = 4, 30, 10

    def cancel_turn_1(i: int, k: int) -> None:
        if i == 1 and k == cancel_before:
            redis.set("t:1:cancel", 1)

    turns = [make_turn(publisher, redis, i) for i in range(n)]
    speak(engine, turns, frames, cancel_turn_1)
    cancelled = turns[1]
    # The frame published after the flag was set is the one that says stop.
    assert cancelled.answers == [False] * (cancel_before - 1) + [True]
    assert cancelled.audio.cancelled and cancelled.audio.generated == cancel_before
    assert int(redis.get("t:1:frames") or 0) == cancel_before
    for turn in (turns[0], *turns[2:]):
        assert turn.codes is not None and turn.codes.shape[0] == frames
        assert not turn.audio.cancelled


def test_a_redis_outage_mid_turn_completes_every_turn(
    engine: Any, own_redis: OwnRedis, redis: Redis, publisher: StepPublisher
) -> None:
    """Redis dies at frame 5 and comes back (empty) at frame 40: every turn makes all its
    frames; what was streamed is a prefix of what is kept, the stream is not resumed, and the
    progress count is written again once a retry finds Redis back."""
    n, frames = 3, 160
    killed, back = threading.Event(), threading.Event()
    lock = threading.Lock()

    def outage(i: int, k: int) -> None:
        with lock:
            if k == 5 and not killed.is_set():
                kept = [streamed(redis, j) for j in range(n)]
                prefixes.extend(kept)
                own_redis.kill()
                killed.set()
            if k == 40 and not back.is_set():
                own_redis.start()
                back.set()
        time.sleep(0.01)  # 160 frames take > 1.6 s: past the one-second retry

    prefixes: list[bytes] = []
    turns = [make_turn(publisher, redis, i) for i in range(n)]
    speak(engine, turns, frames, outage)
    assert killed.is_set() and back.is_set()
    for i, turn in enumerate(turns):
        assert turn.codes is not None and turn.pcm is not None
        assert turn.codes.shape[0] == frames and turn.pcm.shape == (frames * 1920,)
        assert not turn.audio.streaming
        assert prefixes[i] and turn.pcm.tobytes().startswith(prefixes[i])
        assert not redis.exists(f"t:{i}:audio")  # no chunk after the outage
        assert int(redis.get(f"t:{i}:frames") or 0) == frames


def test_a_stopped_publisher_refuses_frames(redis: Redis) -> None:
    publisher = StepPublisher(redis)
    publisher.start()
    publisher.stop()
    turn = make_turn(publisher, redis, 0)
    with pytest.raises(RuntimeError, match="not running"):
        turn.audio.on_frame(np.zeros(4, dtype=np.int64), np.zeros(1920, dtype=np.float32))
