"""The histograms workers measure, and their running totals in Redis.

Workers are other processes, often on other machines, so their measurements reach the API's
``/metrics`` through Redis: each worker tallies its observations in memory and, once a heartbeat,
adds them to one Redis hash per histogram (``HINCRBY``/``HINCRBYFLOAT`` in one ``MULTI``), so any
number of workers add to the same totals without coordinating. The API reads the hashes on each
scrape. A hash holds one field per bucket (counts *not* cumulative, field ``"0"`` for the first
bound … ``str(len(buckets))`` for ``+Inf``) and ``"sum"``. The totals live as long as Redis keeps
its data; a Redis emptied starts them again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis import Redis

from shared.redis_io.keys import RedisKeys

SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Histogram:
    """One histogram's name (as exported), meaning and bucket upper bounds (``+Inf`` implied)."""

    name: str
    documentation: str
    buckets: tuple[float, ...]

    def bucket(self, value: float) -> int:
        """Index of the first bucket whose upper bound holds ``value`` (``le`` semantics)."""
        return bisect.bisect_left(self.buckets, value)


TURN_LATENCY = Histogram(
    "parley_turn_latency_seconds",
    "Generated turns stored: seconds from the job's creation (the POST) to its audio stored.",
    SECONDS_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "parley_turn_queue_wait_seconds",
    "Generated turns stored: seconds from the job's creation to a worker starting it.",
    (0.005, 0.01, *SECONDS_BUCKETS),
)
TIME_TO_FIRST_AUDIO = Histogram(
    "parley_time_to_first_audio_seconds",
    "Generated turns stored: seconds from the job's creation to its first audio streamed.",
    (0.01, *SECONDS_BUCKETS),
)
FIRST_AUDIO_AFTER_START = Histogram(
    "parley_first_audio_after_start_seconds",
    "Generated turns stored: seconds from a worker starting the job to its first audio streamed.",
    (0.01, *SECONDS_BUCKETS),
)
REAL_TIME_FACTOR = Histogram(
    "parley_real_time_factor_ratio",
    "Generated turns stored: generation wall time divided by the stored audio's duration "
    "(below 1 is faster than real time).",
    (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "parley_batch_size_rows",
    "Frame-loop steps by the number of turns (rows) they ran together; the sum is frames made.",
    (1, 2, 4, 8, 16, 32, 64, 128, 256),
)
HISTOGRAMS = (
    TURN_LATENCY,
    QUEUE_WAIT,
    TIME_TO_FIRST_AUDIO,
    FIRST_AUDIO_AFTER_START,
    REAL_TIME_FACTOR,
    BATCH_SIZE,
)


@dataclass
class Tally:
    """Observations of one histogram not yet in Redis: count per bucket index, and their sum."""

    counts: dict[int, int] = field(default_factory=dict)
    sum: float = 0.0

    def add(self, index: int, *, times: int = 1, value_sum: float) -> None:
        self.counts[index] = self.counts.get(index, 0) + times
        self.sum += value_sum

    def merge(self, other: Tally) -> None:
        for index, times in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + times
        self.sum += other.sum


@dataclass(frozen=True)
class HistogramTotals:
    """A histogram as the API exports it: cumulative ``(le, count)`` pairs and the sum."""

    histogram: Histogram
    buckets: list[tuple[str, float]]
    sum: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1]


def add_tallies(redis: Redis, keys: RedisKeys, tallies: Mapping[str, Tally]) -> None:
    """Add tallies (by histogram name) to the shared totals, all or nothing."""
    pipe = redis.pipeline(transaction=True)
    for name, tally in tallies.items():
        key = keys.metrics(name)
        for index, times in tally.counts.items():
            pipe.hincrby(key, str(index), times)
        pipe.hincrbyfloat(key, "sum", tally.sum)
    pipe.execute()


def read_totals(
    redis: Redis, keys: RedisKeys, histograms: Iterable[Histogram] = HISTOGRAMS
) -> list[HistogramTotals]:
    """Every histogram's totals over all workers (zeros for one nobody observed yet)."""
    histograms = list(histograms)
    pipe = redis.pipeline(transaction=False)
    for histogram in histograms:
        pipe.hgetall(keys.metrics(histogram.name))
    found = []
    for histogram, raw in zip(histograms, pipe.execute(), strict=True):
        fields = {k.decode(): float(v) for k, v in raw.items()}
        bounds = [_le(b) for b in histogram.buckets] + ["+Inf"]
        running, buckets = 0.0, []
        for index, le in enumerate(bounds):
            running += fields.get(str(index), 0.0)
            buckets.append((le, running))
        found.append(HistogramTotals(histogram, buckets, fields.get("sum", 0.0)))
    return found


def _le(bound: float) -> str:
    return repr(float(bound))
