"""A generated turn's frames on their way out: what one turn keeps, streams and reports.

Each frame comes from the engine with its audio (decoded once, in the frame loop's batched
streaming pass). The task thread hands it to the worker's
:class:`~worker.step_publisher.StepPublisher` and waits: the round's leader (one of the task
threads) measures the frame's level (with every other turn's, in one pass), runs this turn's
silent-tail guard, and sends the frames the guard lets through to listeners (Redis Stream) with
the progress count and the cancel check, in the one pipeline of the step for every turn of the
worker. The stored codes and audio are exactly what was streamed, and every frame goes out as
it comes.

Redis is only the live view: when it fails mid-turn the turn goes on, because SQL will hold the
result. Streaming stops for the rest of the turn (so what listeners got stays a prefix of the
stored audio, which they are completed from), and progress and the cancel flag are tried again
at most once a second.

The methods below :meth:`TurnAudio.result` are the publisher's: they run in the leader's thread
while the turn's own thread waits for the answer, so one thread at a time touches a turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from redis.client import Pipeline
from redis.exceptions import RedisError

from shared.audio import containers as audio
from shared.contract.segments import Segment
from shared.contract.states import CancelFlag
from shared.redis_io.audio_stream import AudioStreamWriter
from shared.redis_io.keys import JOB_KEY_TTL_S
from worker.silence import Frame, SilenceGuard

if TYPE_CHECKING:
    from worker.step_publisher import StepPublisher

log = logging.getLogger(__name__)

REDIS_RETRY_S = 1.0


class TurnAudio:
    """Collects one turn: use :meth:`on_frame` as the engine's callback for each of its segments
    (:meth:`start_segment`, then :meth:`end_segment` unless it was cancelled), then
    :meth:`result`.

    ``on_frame`` returns True (stop generating) when the job was cancelled (``cancelled``) or
    the guard saw a silent tail (``guard.triggered``). Progress, the frames let through and the
    cancel check go out in the publisher's pipeline of the step.
    """

    def __init__(
        self,
        *,
        publisher: StepPublisher,
        stream: AudioStreamWriter,
        guard: SilenceGuard | None,
        frames_key: str,
        cancel_key: str,
    ) -> None:
        """Set up an empty turn; see the class docstring."""
        self._publisher = publisher
        self._stream = stream
        self.guard = guard
        self._frames_key = frames_key
        self.cancel_key = cancel_key
        self.answered = threading.Event()  # set by the publisher when a request is done
        self.generated = 0
        self.cancelled = False
        self.interrupted = False  # the cancel flag asked to keep what was spoken (barge-in)
        self._codes: list[np.ndarray] = []
        self._pcm: list[np.ndarray] = []
        self._outbox: list[tuple[int, bytes]] = []  # (offset, PCM) not yet sent to the stream
        self._sending = 0  # chunks in the pipeline being sent
        self.streaming = True  # False once Redis failed during this turn
        self._retry_at = 0.0
        self.pcm_bytes = 0  # PCM bytes the turn holds so far (what a full stream carries)
        self.first_audio_at: float | None = None  # perf_counter when audio first reached Redis

    def on_frame(self, frame: np.ndarray, samples: np.ndarray) -> bool:
        """Take one generated frame ``(num_codebooks,)`` and its float samples (the engine's
        ``on_frame`` contract); True means stop generating."""
        return self._publisher.frame(self, frame, samples)

    def end_segment(self) -> int:
        """A segment ended by itself (its end frame, its budget, or a silent tail): send what the
        guard holds. Returns the frames the turn has kept so far."""
        self._publisher.end(self)
        return self.kept

    def start_segment(self, guard: SilenceGuard | None) -> None:
        """The next segment's frames come from a fresh generation: a fresh silence guard."""
        self.guard = guard

    def mark_segment(self, index: int, segment: Segment) -> None:
        """Tell listeners segment ``index`` has ended, after its audio (sent by now)."""
        self._stream.mark_segment(index, segment, at=self.pcm_bytes)

    @property
    def kept(self) -> int:
        """Frames kept (sent to listeners, or to be stored) so far."""
        return len(self._codes)

    def codes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The kept frames' codes ``[start, stop)``, ``(frames, num_codebooks)``."""
        kept = self._codes[start:stop]
        return np.stack(kept) if kept else np.zeros((0, 0), dtype=np.int64)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The turn's kept codes and int16 samples: exactly what listeners were sent."""
        if not self._codes:
            return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int16)
        return np.stack(self._codes), np.concatenate(self._pcm)

    @property
    def takes_frames(self) -> bool:
        """Whether a new frame is still heard (not after the guard triggered)."""
        return self.guard is None or not self.guard.triggered

    @property
    def stops(self) -> bool:
        """The answer to the last frame: cancelled, or a silent tail."""
        return self.cancelled or (self.guard is not None and self.guard.triggered)

    def take_frame(
        self, frame: np.ndarray, heard: np.ndarray | None, level_dbfs: float | None
    ) -> None:
        """Count a frame; while :attr:`takes_frames`, ``heard`` is its samples as listeners get
        them (int16 as floats) and ``level_dbfs`` their level (for the guard)."""
        self.generated += 1
        if heard is None:
            return
        if self.guard is None:
            self._emit([(frame, heard)])
        else:
            self._emit(self.guard.push(frame, heard, level_dbfs=level_dbfs))

    def take_end(self) -> None:
        """The turn ended: what the guard still holds goes out."""
        if self.guard is not None:
            self._emit(self.guard.finish())

    def wants_redis(self, now: float) -> bool:
        """Whether this round sends the turn's writes (not while waiting to retry Redis)."""
        return self.streaming or now >= self._retry_at

    def queue_writes(self, pipe: Pipeline) -> int:
        """Queue the progress count and the chunks waiting; the number of commands queued."""
        pipe.set(self._frames_key, self.generated, ex=JOB_KEY_TTL_S)
        chunks, self._outbox = self._outbox, []
        for at, chunk in chunks:
            self._stream.add_chunk(pipe, chunk, at=at)
        self._sending = len(chunks)
        return 1 + 2 * len(chunks)

    def settle(self, replies: Sequence[Any] | RedisError, *, now: float) -> None:
        """Take the replies to this turn's commands (or the error that failed them all)."""
        if isinstance(replies, RedisError):
            error: BaseException | None = replies
        else:
            error = next((r for r in replies if isinstance(r, BaseException)), None)
        if error is None:
            if self._sending and self.first_audio_at is None:
                self.first_audio_at = time.perf_counter()
            return
        if self.streaming:
            log.warning(
                "%s: Redis failed mid-turn (%s); the turn goes on, its stream stops here",
                self._stream.key,
                error,
            )
        self.streaming = False
        self._outbox.clear()
        self._retry_at = now + REDIS_RETRY_S

    def cancel_seen(self, flag: bytes | str | None) -> None:
        """The cancel flag as the last read gave it (None: not set)."""
        self.cancelled = flag is not None
        if isinstance(flag, bytes):
            flag = flag.decode(errors="replace")
        self.interrupted = flag == CancelFlag.INTERRUPT

    def _emit(self, frames: list[Frame]) -> None:
        for codes, heard in frames:
            pcm = audio.to_pcm16(heard)
            chunk = audio.pcm16_bytes(pcm)
            self._codes.append(codes)
            self._pcm.append(pcm)
            if self.streaming:  # once Redis failed, listeners are completed from SQL
                self._outbox.append((self.pcm_bytes, chunk))
            self.pcm_bytes += len(chunk)
