"""What one worker measures, kept in memory until its heartbeat adds it to Redis.

Task threads record each stored turn (:meth:`WorkerMetrics.record_turn`); the frame loop counts
its steps by batch size itself (``Batcher.steps_by_rows``, plain integers, no I/O in the loop).
The heartbeat thread calls :meth:`WorkerMetrics.flush` once a beat: it adds what is new to the
shared totals (``shared.redis_io.metric_totals``). When Redis fails the observations are kept
for the next beat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError

from shared.redis_io import metric_totals as metrics
from shared.redis_io.keys import RedisKeys

log = logging.getLogger(__name__)


@dataclass
class TurnTiming:
    """Moments of one job on this worker's ``time.perf_counter`` clock."""

    began: float = field(default_factory=time.perf_counter)  # the job marked running
    first_audio: float | None = None  # its first audio reached the stream
    generated: float | None = None  # generation (and decoding) done, before storing


class WorkerMetrics:
    """Observations this worker made since its last flush (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, metrics.Tally] = {}
        self._steps_flushed: list[int] = []

    def observe(self, histogram: metrics.Histogram, value: float) -> None:
        with self._lock:
            tally = self._pending.setdefault(histogram.name, metrics.Tally())
            tally.add(histogram.bucket(value), value_sum=value)

    def record_turn(self, *, created_at: datetime, timing: TurnTiming, audio_s: float) -> None:
        """A generated turn was stored now: its latency, queue wait, first audio and RTF.

        ``created_at`` is the job row's (the API's clock); the spans from the job's start are
        this worker's own clock, so only those reaching back to the creation depend on the
        machines' clocks agreeing.
        """
        now = time.perf_counter()
        if created_at.tzinfo is None:  # SQLite hands back naive UTC
            created_at = created_at.replace(tzinfo=UTC)
        latency_s = max(0.0, (datetime.now(UTC) - created_at).total_seconds())
        self.observe(metrics.TURN_LATENCY, latency_s)
        self.observe(metrics.QUEUE_WAIT, max(0.0, latency_s - (now - timing.began)))
        if timing.first_audio is not None:
            self.observe(
                metrics.TIME_TO_FIRST_AUDIO, max(0.0, latency_s - (now - timing.first_audio))
            )
            self.observe(metrics.FIRST_AUDIO_AFTER_START, timing.first_audio - timing.began)
        if timing.generated is not None and audio_s > 0:
            self.observe(metrics.REAL_TIME_FACTOR, (timing.generated - timing.began) / audio_s)

    def flush(self, redis: Redis, keys: RedisKeys, *, batch_steps: Sequence[int]) -> bool:
        """Add what is new (turns recorded, frame-loop steps counted) to Redis; True if it went.

        ``batch_steps[n]`` is how many steps the frame loop ran with ``n`` rows, since start.
        Called from one thread at a time (the heartbeat's).
        """
        steps = list(batch_steps)
        with self._lock:
            pending, self._pending = self._pending, {}
        batch = metrics.Tally()
        for rows, total in enumerate(steps):
            new = total - (self._steps_flushed[rows] if rows < len(self._steps_flushed) else 0)
            if new > 0 and rows > 0:
                batch.add(metrics.BATCH_SIZE.bucket(rows), times=new, value_sum=rows * new)
        tallies = dict(pending)
        if batch.counts:
            tallies[metrics.BATCH_SIZE.name] = batch
        if not tallies:
            return True
        try:
            metrics.add_tallies(redis, keys, tallies)
        except RedisError as exc:
            log.warning("metrics not sent (%s); kept for the next heartbeat", exc)
            with self._lock:
                for name, tally in pending.items():
                    self._pending.setdefault(name, metrics.Tally()).merge(tally)
            return False
        self._steps_flushed = steps
        return True
