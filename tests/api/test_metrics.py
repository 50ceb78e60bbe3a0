"""GET /metrics with no worker: it answers with Redis away; and a worker's observations that
could not be sent wait for the next flush. Metrics moving as workers run turns:
tests/integration/test_metrics.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from shared.redis_io import metric_totals as metrics
from shared.redis_io.keys import RedisKeys
from tests.metrics_scrape import scrape, value
from tests.stack import REDIS_URL, Stack
from worker.metrics import WorkerMetrics


def test_metrics_answer_with_redis_away(make_stack: Callable[..., Stack]) -> None:
    """SQL's figures still come; Redis's are left out and parley_source_up says so."""
    stack = make_stack("sqlite", workers=0, redis_url="redis://127.0.0.1:1/0")
    samples = scrape(stack)
    assert value(samples, "parley_source_up", source="redis") == 0
    assert value(samples, "parley_source_up", source="database") == 1
    assert value(samples, "parley_queue_depth_jobs") == 0
    assert ("parley_workers", frozenset()) not in samples


def test_worker_observations_wait_out_a_redis_failure() -> None:
    """Observations a worker could not send are kept and sent with the next flush."""
    keys = RedisKeys(f"parley-test-{uuid.uuid4().hex[:10]}")
    redis = Redis.from_url(REDIS_URL)
    away = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        worker = WorkerMetrics()
        worker.observe(metrics.TURN_LATENCY, 0.3)
        assert worker.flush(away, keys, batch_steps=[0, 5, 2]) is False
        worker.observe(metrics.TURN_LATENCY, 7.0)
        assert worker.flush(redis, keys, batch_steps=[0, 6, 2]) is True
        assert worker.flush(redis, keys, batch_steps=[0, 6, 2]) is True  # nothing new: no-op
        other = WorkerMetrics()  # a second worker adds to the same totals
        other.observe(metrics.TURN_LATENCY, 400.0)
        assert other.flush(redis, keys, batch_steps=[0, 0, 1])
        totals: dict[str, Any] = {t.histogram.name: t for t in metrics.read_totals(redis, keys)}
        latency = totals[metrics.TURN_LATENCY.name]
        assert latency.count == 3 and latency.sum == pytest.approx(407.3)
        assert dict(latency.buckets)["0.5"] == 1 and dict(latency.buckets)["10.0"] == 2
        batch = totals[metrics.BATCH_SIZE.name]
        # steps: 6 with one row and 2 with two (first worker), 1 with two (second)
        assert batch.count == 9 and batch.sum == 6 + 2 * 2 + 2
        assert dict(batch.buckets)["1.0"] == 6
    finally:
        for key in redis.scan_iter(match=f"{keys.prefix}:*"):
            redis.delete(key)
        redis.close()
        away.close()
