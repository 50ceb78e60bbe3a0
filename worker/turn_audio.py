"""A generated turn's frames on their way out, in the task's own thread.

Each frame the frame loop makes is decoded once by the streaming decoder, judged by the
silent-tail guard, and the frames the guard lets through are streamed to listeners (Redis
Stream) and kept: the stored codes and audio are exactly what was streamed. The first frame is
decoded and sent alone, at once (time to first audio); later frames go in chunks of
``chunk_frames``, since one decoder call costs about the same for one frame as for several.

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
from worker.engine.codec_stream import StreamingDecoder
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
        decoder: StreamingDecoder,
        guard: SilenceGuard | None,
        frames_key: str,
        cancel_key: str,
        chunk_frames: int = 1,
    ) -> None:
        """Set up an empty turn; see the class docstring."""
        self._redis = redis
        self._stream = stream
        self._decoder = decoder
        self.guard = guard
        self._frames_key = frames_key
        self._cancel_key = cancel_key
        self._chunk = chunk_frames
        self._pending: list[np.ndarray] = []
        self.generated = 0
        self.cancelled = False
        self._codes: list[np.ndarray] = []
        self._pcm: list[np.ndarray] = []
        self._outbox: list[tuple[int, bytes]] = []  # (offset, PCM) not yet sent to the stream
        self.streaming = True  # False once Redis failed during this turn
        self._retry_at = 0.0
        self.pcm_bytes = 0  # PCM bytes the turn holds so far (what a full stream carries)
        self.first_audio_at: float | None = None  # perf_counter when audio first reached Redis

    def on_frame(self, frame: np.ndarray) -> bool:
        """Take one generated frame ``(num_codebooks,)``; True means stop generating."""
        self.generated += 1
        self._pending.append(frame)
        if self.generated == 1 or len(self._pending) >= self._chunk:
            self._flush()
        self.cancelled = self._publish(check_cancel=True)
        return self.cancelled or (self.guard is not None and self.guard.triggered)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Flush what is pending or held (at a natural end); the turn's codes and int16 samples."""
        self._flush()
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

    def _flush(self) -> None:
        """Decode the pending frames (once, together) and pass them through the guard."""
        if not self._pending or (self.guard is not None and self.guard.triggered):
            self._pending.clear()
            return
        frames = np.stack(self._pending)
        self._pending.clear()
        # The samples listeners get (int16), as floats for the guard; exact both ways.
        pcm = audio.to_pcm16(self._decoder.push(frames))
        heard = pcm.astype(np.float32) / audio.PCM16_FULL_SCALE
        per_frame = heard.reshape(len(frames), -1)
        for frame, samples in zip(frames, per_frame, strict=True):
            if self.guard is None:
                self._emit([(frame, samples)])
                continue
            self._emit(self.guard.push(frame, samples))
            if self.guard.triggered:
                break

    def _emit(self, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for codes, heard in frames:
            pcm = audio.to_pcm16(heard)
            chunk = audio.pcm16_bytes(pcm)
            self._codes.append(codes)
            self._pcm.append(pcm)
            self._outbox.append((self.pcm_bytes, chunk))
            self.pcm_bytes += len(chunk)
