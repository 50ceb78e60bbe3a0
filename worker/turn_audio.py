"""A generated turn's frames on their way out, in the task's own thread.

Each frame the frame loop makes is decoded once by the streaming decoder, judged by the
silent-tail guard, and the frames the guard lets through are streamed to listeners (Redis
Stream) and kept: the stored codes and audio are exactly what was streamed. The first frame is
decoded and sent alone, at once (time to first audio); later frames go in chunks of
``chunk_frames``, since one decoder call costs about the same for one frame as for several.
"""

from __future__ import annotations

import numpy as np
from redis import Redis
from redis.client import Pipeline

from shared import audio
from shared.audio_stream import AudioStreamWriter
from shared.keys import JOB_KEY_TTL_S
from worker.engine.codec_stream import StreamingDecoder
from worker.silence import SilenceGuard


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

    def on_frame(self, frame: np.ndarray) -> bool:
        """Take one generated frame ``(num_codebooks,)``; True means stop generating."""
        self.generated += 1
        self._pending.append(frame)
        pipe = self._redis.pipeline()
        pipe.set(self._frames_key, self.generated, ex=JOB_KEY_TTL_S)
        if self.generated == 1 or len(self._pending) >= self._chunk:
            self._flush(pipe)
        pipe.exists(self._cancel_key)
        self.cancelled = bool(pipe.execute()[-1])
        return self.cancelled or (self.guard is not None and self.guard.triggered)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Flush what is pending or held (at a natural end); the turn's codes and int16 samples."""
        pipe = self._redis.pipeline()
        self._flush(pipe)
        if self.guard is not None:
            self._emit(pipe, self.guard.finish())
        pipe.execute()
        if not self._codes:
            return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int16)
        return np.stack(self._codes), np.concatenate(self._pcm)

    def _flush(self, pipe: Pipeline) -> None:
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
                self._emit(pipe, [(frame, samples)])
                continue
            self._emit(pipe, self.guard.push(frame, samples))
            if self.guard.triggered:
                break

    def _emit(self, pipe: Pipeline, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for codes, heard in frames:
            pcm = audio.to_pcm16(heard)
            self._codes.append(codes)
            self._pcm.append(pcm)
            self._stream.add_chunk(pipe, audio.pcm16_bytes(pcm))
