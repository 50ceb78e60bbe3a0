"""One Redis pipeline per step for every running turn of a worker.

The frame loop hands each turn its frame at the end of a step; each turn's task thread passes
it on (``TurnAudio.on_frame``) to the worker's one :class:`StepPublisher` and waits for the
answer. One of the waiting task threads, the round's leader, gathers the step's frames of every
turn, measures their levels in one vectorised pass, runs each turn's silent-tail guard, and
sends every turn's writes in one pipeline: progress counts, the stream chunks let through, and
one ``MGET`` of all the cancel flags. Then it answers each turn (stop or go on) and hands the
lead to a request that came meanwhile, if any (flat combining: no thread of its own, so a turn
alone publishes in its own thread with no hand-over, as before).

Invariants:

- A turn has at most one request in flight (its task thread waits for the answer), so a turn's
  state is only touched by the leader while its own thread waits: no locks on it.
- At most one round runs at a time; a request that comes while one runs waits for the next.
- A round with a frame waits for a frame of every live turn (one whose last frame was answered
  "go on"), at most ``gather_s`` after it began, so the frames of one step go out together.
  Turns that join (a first frame) ride along with their step; a turn's end (its last writes)
  rides along with whatever is pending, and goes at once when nothing is.
- A Redis failure never reaches a turn: it is settled per turn (``TurnAudio.settle``), and a
  failure of the publisher's own code fails only the turns of that round (raised in their
  threads).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from redis import Redis
from redis.exceptions import RedisError

from shared.audio import containers as audio
from worker.silence import frames_dbfs
from worker.turn_audio import TurnAudio

log = logging.getLogger(__name__)

GATHER_S = 0.02  # how long a round waits for a live turn's frame of the same step


@dataclass
class _Request:
    """A frame of a turn (``frame`` set) or its end (``frame`` None), waiting for its round.
    ``lead`` is set when the request is handed the lead of the next round."""

    turn: TurnAudio
    frame: np.ndarray | None
    samples: np.ndarray
    stop: bool = False
    lead: bool = False
    error: BaseException | None = None


class StepPublisher:
    """The worker's publisher: :meth:`start` opens it with the runtime, :meth:`stop` closes it.

    ``pipelines`` and ``rows`` count the pipelines sent and the turn requests they carried.
    """

    def __init__(self, redis: Redis, *, gather_s: float = GATHER_S) -> None:
        self._redis = redis
        self.gather_s = gather_s
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the leader waits here for live turns
        self._pending: list[_Request] = []
        self._live: set[TurnAudio] = set()  # turns generating: each round waits for them
        self._leading = False  # a round is being gathered or sent
        self._open = False
        self.pipelines = 0
        self.rows = 0

    def start(self) -> None:
        """Take requests from now on."""
        with self._lock:
            self._open = True

    def stop(self) -> None:
        """Refuse requests from now on (RuntimeError); a round under way still finishes."""
        with self._lock:
            self._open = False

    def frame(self, turn: TurnAudio, frame: np.ndarray, samples: np.ndarray) -> bool:
        """Publish one frame of ``turn`` in the next round; True means stop generating."""
        return self._submit(_Request(turn, frame, samples))

    def end(self, turn: TurnAudio) -> None:
        """Publish ``turn``'s last writes (what its guard held, the final count); returns once
        they are sent (or Redis failed)."""
        self._submit(_Request(turn, None, _NO_SAMPLES))

    def _submit(self, request: _Request) -> bool:
        answered = request.turn.answered
        answered.clear()
        with self._lock:
            if not self._open:
                raise RuntimeError("the step publisher is not running")
            self._pending.append(request)
            lead = not self._leading
            if lead:
                self._leading = True
            elif self._live <= {r.turn for r in self._pending}:
                self._arrived.notify()  # only when the leader's wait is over
        if not lead:
            answered.wait()  # answered, or handed the lead
            lead = request.lead
        if lead:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.stop

    def _lead(self) -> None:
        """Gather and send one round, answer its turns, hand the lead on (or let it go)."""
        with self._lock:
            batch = self._gather()
        try:
            self._publish(batch)
        except Exception as exc:  # a bug here fails this round's turns, not the worker
            log.exception("step publisher failed a round of %d turns", len(batch))
            for request in batch:
                request.error = exc
        with self._lock:
            for request in batch:
                if request.frame is not None and not request.stop and request.error is None:
                    self._live.add(request.turn)
                else:
                    self._live.discard(request.turn)
            successor = self._pending[0] if self._pending else None
            if successor is None:
                self._leading = False
            else:
                successor.lead = True
        for request in batch:
            request.turn.answered.set()
        if successor is not None:
            successor.turn.answered.set()

    def _gather(self) -> list[_Request]:
        """The round's requests (called with the lock held). Once a frame is among them (a
        step was delivered), wait for a frame of every other live turn too, at most
        ``gather_s``. A live turn that did not come in time is not waited for again until it
        comes (a turn whose generation failed never does). Ends alone go at once."""
        deadline = time.monotonic() + self.gather_s
        while self._waits_for_live():
            left = deadline - time.monotonic()
            if left <= 0:
                self._live &= {r.turn for r in self._pending}
                break
            self._arrived.wait(left)
        batch, self._pending = self._pending, []
        return batch

    def _waits_for_live(self) -> bool:
        """Whether a step's frames are pending while some live turn's frame is not yet."""
        if all(r.frame is None for r in self._pending):
            return False
        return not self._live <= {r.turn for r in self._pending}

    def _publish(self, batch: list[_Request]) -> None:
        """Take every frame (levels in one pass) and end, send one pipeline, answer."""
        _take_frames([r for r in batch if r.frame is not None])
        for request in batch:
            if request.frame is None:
                request.turn.take_end()
        now = time.monotonic()
        sending = [r for r in batch if r.turn.wants_redis(now)]
        if sending:
            self._send(sending, now)
        for request in batch:
            request.stop = request.frame is not None and request.turn.stops

    def _send(self, sending: list[_Request], now: float) -> None:
        """One pipeline: every turn's progress and chunks, then one MGET of the cancel flags of
        the turns still generating. Each turn settles from its own replies."""
        pipe = self._redis.pipeline(transaction=False)
        spans = [r.turn.queue_writes(pipe) for r in sending]
        checking = [r.turn for r in sending if r.frame is not None]
        if checking:
            pipe.mget([turn.cancel_key for turn in checking])
        self.pipelines += 1
        self.rows += len(sending)
        try:
            replies = pipe.execute(raise_on_error=False)
        except RedisError as exc:
            for request in sending:
                request.turn.settle(exc, now=now)
            return
        at = 0
        for request, span in zip(sending, spans, strict=True):
            request.turn.settle(replies[at : at + span], now=now)
            at += span
        if not checking:
            return
        flags = replies[at]
        if isinstance(flags, RedisError):
            for turn in checking:
                turn.settle(flags, now=now)
            return
        for turn, flag in zip(checking, flags, strict=True):
            turn.cancel_seen(flag)


_NO_SAMPLES = np.zeros(0, dtype=np.float32)


def _take_frames(frames: list[_Request]) -> None:
    """Hand each turn its frame as listeners hear it (int16 and back to floats), the int16
    conversion and the guards' levels done for every turn at once."""
    live = [r for r in frames if r.turn.takes_frames]
    for request in frames:
        if not request.turn.takes_frames:
            request.turn.take_frame(request.frame, None, None)  # type: ignore[arg-type]
    if not live:
        return
    heard = _heard([r.samples for r in live])
    guarded = [i for i, r in enumerate(live) if r.turn.guard is not None]
    levels: list[float | None] = [None] * len(live)
    for i, measured in zip(guarded, _levels([heard[i] for i in guarded]), strict=True):
        levels[i] = measured
    for request, row, level in zip(live, heard, levels, strict=True):
        request.turn.take_frame(request.frame, row, level)  # type: ignore[arg-type]


def _heard(rows: list[np.ndarray]) -> list[np.ndarray]:
    """Float samples as listeners get them: int16, as floats again (exact both ways)."""
    if len({row.shape for row in rows}) == 1:
        pcm = audio.to_pcm16(np.stack(rows))
        return list(pcm.astype(np.float32) / audio.PCM16_FULL_SCALE)
    return [audio.to_pcm16(row).astype(np.float32) / audio.PCM16_FULL_SCALE for row in rows]


def _levels(rows: list[np.ndarray]) -> list[float]:
    """``frame_dbfs`` of every row: one vectorised pass when they have one length."""
    if not rows:
        return []
    if len({row.shape for row in rows}) == 1:
        return frames_dbfs(np.stack(rows))
    return [frames_dbfs(row[None])[0] for row in rows]
