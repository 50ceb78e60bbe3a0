"""A generated turn's frames on their way out, in the task's own thread.

Each frame comes from the engine with its audio (decoded once, in the frame loop's batched
streaming pass), is judged by the silent-tail guard, and the frames the guard lets through are
streamed to listeners (Redis Stream) and kept: the stored codes and audio are exactly what was
streamed. Every frame goes out as it comes, in the same Redis round trip as the progress count
and the cancel check.

Redis is only the live view: when it fails mid-turn the turn goes on, because SQL will hold the
result. Streaming stops for the rest of the turn (so what listeners got stays a prefix of the
stored audio, which they are completed from), and progress and the cancel flag are tried again
at most once a second.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from redis import Redis
from redis.exceptions import RedisError

from shared import audio
from shared.audio_stream import AudioStreamWriter
from shared.keys import JOB_KEY_TTL_S
from worker.silence import SilenceGuard

log = logging.getLogger(__name__)

REDIS_RETRY_S = 1.0


class TurnAudio:
    """Collects one turn: use :meth:`on_frame` as the engine's callback, then :meth:`finish`.

    ``on_frame`` returns True (stop generating) when the job was cancelled (``cancelled``) or
    the guard saw a silent tail (``guard.triggered``). One Redis round trip per frame carries
    the progress count, the frames let through, and the cancel check.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        stream: AudioStreamWriter,
        guard: SilenceGuard | None,
        frames_key: str,
        cancel_key: str,
    ) -> None:
        """Set up an empty turn; see the class docstring."""
        self._redis = redis
        self._stream = stream
        self.guard = guard
        self._frames_key = frames_key
        self._cancel_key = cancel_key
        self.generated = 0
        self.cancelled = False
        self._codes: list[np.ndarray] = []
        self._pcm: list[np.ndarray] = []
        self._outbox: list[tuple[int, bytes]] = []  # (offset, PCM) not yet sent to the stream
        self.streaming = True  # False once Redis failed during this turn
        self._retry_at = 0.0
        self.pcm_bytes = 0  # PCM bytes the turn holds so far (what a full stream carries)
        self.first_audio_at: float | None = None  # perf_counter when audio first reached Redis

    def on_frame(self, frame: np.ndarray, samples: np.ndarray) -> bool:
        """Take one generated frame ``(num_codebooks,)`` and its float samples (the engine's
        ``on_frame`` contract); True means stop generating."""
        self.generated += 1
        if self.guard is None or not self.guard.triggered:
            # The samples listeners get (int16), as floats for the guard; exact both ways.
            heard = audio.to_pcm16(samples).astype(np.float32) / audio.PCM16_FULL_SCALE
            self._emit([(frame, heard)] if self.guard is None else self.guard.push(frame, heard))
        self.cancelled = self._publish(check_cancel=True)
        return self.cancelled or (self.guard is not None and self.guard.triggered)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Flush what the guard holds (at a natural end); the turn's codes and int16 samples."""
        if self.guard is not None:
            self._emit(self.guard.finish())
        self._publish(check_cancel=False)
        if not self._codes:
            return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int16)
        return np.stack(self._codes), np.concatenate(self._pcm)

    def _publish(self, *, check_cancel: bool) -> bool:
        """One round trip: progress, the chunks waiting (while streaming), the cancel check.
        Returns whether the job was cancelled; a Redis failure is logged and never raised."""
        chunks, self._outbox = self._outbox, []
        if not self.streaming and time.monotonic() < self._retry_at:
            return False
        try:
            pipe = self._redis.pipeline()
            pipe.set(self._frames_key, self.generated, ex=JOB_KEY_TTL_S)
            if self.streaming:
                for at, chunk in chunks:
                    self._stream.add_chunk(pipe, chunk, at=at)
            if check_cancel:
                pipe.exists(self._cancel_key)
            replies = pipe.execute()
            if chunks and self.streaming and self.first_audio_at is None:
                self.first_audio_at = time.perf_counter()
            return check_cancel and bool(replies[-1])
        except RedisError as exc:
            if self.streaming:
                log.warning(
                    "%s: Redis failed mid-turn (%s); the turn goes on, its stream stops here",
                    self._stream.key,
                    exc,
                )
            self.streaming = False
            self._retry_at = time.monotonic() + REDIS_RETRY_S
            return False

    def _emit(self, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for codes, heard in frames:
            pcm = audio.to_pcm16(heard)
            chunk = audio.pcm16_bytes(pcm)
            self._codes.append(codes)
            self._pcm.append(pcm)
            self._outbox.append((self.pcm_bytes, chunk))
            self.pcm_bytes += len(chunk)
