"""Service-wide metrics at scrape time: jobs from SQL; workers and their histograms from Redis.

These are the same from every API process (they come from SQL and Redis, not from this process).
The SQL aggregate (one ``GROUP BY`` on the indexed ``jobs.status``) is cached for
``SQL_CACHE_S``, so scrapes from several Prometheus servers cost one query a second at most.
A source that does not answer is left out of the scrape and ``parley_source_up`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from api.resources import ApiState
from shared.db.models import Job, JobStatus
from shared.jobs.queue import broker_queue_key
from shared.redis_io.heartbeats import live_beats
from shared.redis_io.metric_totals import read_totals

log = logging.getLogger(__name__)

SQL_CACHE_S = 1.0


class ServiceCollector(Collector):
    """A prometheus_client collector over Parley's SQL and Redis state."""

    def __init__(self, state: ApiState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._jobs: tuple[float, dict[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "parley_source_up",
            "Whether a source of these metrics answered this scrape (1) or not (0).",
            labels=["source"],
        )
        try:
            yield from self._sql_families()
            up.add_metric(["database"], 1)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric(["database"], 0)
        try:
            yield from self._redis_families()
            up.add_metric(["redis"], 1)
        except RedisError as exc:
            log.warning("metrics: Redis did not answer: %s", exc)
            up.add_metric(["redis"], 0)
        yield up

    def jobs_by_status(self) -> dict[str, int]:
        """Jobs per status, every status present (cached for ``SQL_CACHE_S``)."""
        with self._lock:
            now = time.monotonic()
            if self._jobs is not None and now - self._jobs[0] < SQL_CACHE_S:
                return self._jobs[1]
            counts = {status.value: 0 for status in JobStatus}
            with self.state.reads() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                counts.update({str(status): int(n) for status, n in rows})
            self._jobs = (now, counts)
            return counts

    def _sql_families(self) -> list[Metric]:
        counts = self.jobs_by_status()  # before yielding anything: all or nothing
        jobs = GaugeMetricFamily(
            "parley_jobs", "Jobs by status (SQL), over all conversations.", labels=["status"]
        )
        for status, n in counts.items():
            jobs.add_metric([status], n)
        depth = GaugeMetricFamily(
            "parley_queue_depth_jobs",
            "Jobs queued (SQL): waiting for a worker or behind their conversation's earlier turn.",
            value=counts[JobStatus.QUEUED.value],
        )
        return [jobs, depth]

    def _redis_families(self) -> list[Metric]:
        state = self.state
        workers = live_beats(state.redis, state.keys)
        broker = state.redis.llen(broker_queue_key(state.settings))
        totals = read_totals(state.redis, state.keys)
        families: list[Metric] = [
            GaugeMetricFamily("parley_workers", "Live workers (heartbeats).", value=len(workers)),
            GaugeMetricFamily(
                "parley_broker_queue_messages",
                "Turn messages in the broker's queue, sent and not yet taken by a worker.",
                value=int(broker),
            ),
        ]
        rows = GaugeMetricFamily(
            "parley_worker_batch_rows",
            "Turns in a worker's frame loop at its last heartbeat.",
            labels=["worker"],
        )
        slots = GaugeMetricFamily(
            "parley_worker_batch_slots",
            "Turns a worker's frame loop can hold (PARLEY_MAX_BATCH).",
            labels=["worker"],
        )
        for worker in workers:
            rows.add_metric([worker.label], float(worker.batch_rows or 0))
            slots.add_metric([worker.label], float(worker.max_batch or 0))
        families += [rows, slots]
        for total in totals:
            families.append(
                HistogramMetricFamily(
                    total.histogram.name,
                    total.histogram.documentation,
                    buckets=total.buckets,
                    sum_value=total.sum,
                )
            )
        return families
