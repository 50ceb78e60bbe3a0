"""GET /metrics on a real stack: it parses, and it moves as turns are queued, run and stored;
the worker count and batch rows follow the workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from shared.redis_io import metric_totals as metrics
from tests.conftest import DB_KINDS
from tests.metrics_scrape import Samples, scrape, value
from tests.stack import RUNNING_MS, Stack

TURN_HISTOGRAMS = [
    metrics.TURN_LATENCY,
    metrics.QUEUE_WAIT,
    metrics.TIME_TO_FIRST_AUDIO,
    metrics.FIRST_AUDIO_AFTER_START,
    metrics.REAL_TIME_FACTOR,
]
TURNS_ROUTE = "/v1/conversations/{conversation_id}/turns"


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def wait_for(stack: Stack, check: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    """Scrape until ``check`` holds (worker figures arrive with the next heartbeat)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(stack)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never got there:\n{stack.client.get('/metrics').text}")
        time.sleep(0.2)


def counts(samples: Samples) -> dict[str, float]:
    return {h.name: value(samples, f"{h.name}_count") for h in metrics.HISTOGRAMS}


@pytest.mark.parametrize("db_kind", DB_KINDS)
def test_metrics_move_as_turns_run(make_stack: Callable[..., Stack], db_kind: str) -> None:
    stack = make_stack(db_kind, workers=0)
    before = scrape(stack)
    assert value(before, "parley_workers") == 0
    assert value(before, "parley_source_up", source="database") == 1
    assert value(before, "parley_source_up", source="redis") == 1
    assert set(counts(before).values()) == {0}
    assert by_label(before, "parley_jobs", "status") == {
        "queued": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }

    # Four conversations' turns wait for a worker: the queue shows them.
    began = time.monotonic()
    cids = [stack.conversation() for _ in range(4)]
    turns = [
        stack.say(cid, 0, "Hello there, how was the trip?", max_audio_length_ms=2400)
        for cid in cids
    ]
    queued = wait_for(stack, lambda s: value(s, "parley_queue_depth_jobs") == 4)
    assert value(queued, "parley_jobs", status="queued") == 4
    assert value(queued, "parley_broker_queue_messages") == 4

    # One worker takes them all at once (they share its frame loop), and stores them.
    stack.start_worker()
    done = [stack.wait_job(t["job_id"]) for t in turns]
    elapsed_s = time.monotonic() - began
    assert [j["status"] for j in done] == ["succeeded"] * 4
    after = wait_for(stack, lambda s: value(s, "parley_turn_latency_seconds_count") == 4)
    assert all(value(after, f"{h.name}_count") == 4 for h in TURN_HISTOGRAMS), counts(after)
    assert by_label(after, "parley_jobs", "status") == {
        "queued": 0,
        "running": 0,
        "succeeded": 4,
        "failed": 0,
        "cancelled": 0,
    }
    assert value(after, "parley_queue_depth_jobs") == 0
    assert value(after, "parley_broker_queue_messages") == 0
    assert value(after, "parley_workers") == 1

    # The figures are the turns' own: each span lies within the test's wall time and in order.
    latency = value(after, "parley_turn_latency_seconds_sum")
    first_audio = value(after, "parley_time_to_first_audio_seconds_sum")
    wait = value(after, "parley_turn_queue_wait_seconds_sum")
    assert 0 < wait < first_audio < latency <= 4 * elapsed_s
    assert 0 < value(after, "parley_first_audio_after_start_seconds_sum") < latency - wait
    rtf = value(after, "parley_real_time_factor_ratio_sum") / 4
    assert 0 < rtf < 100

    # Batch occupancy: every frame made was counted, and some steps ran several turns together.
    frames_stored = sum(
        stack.client.get(f"/v1/conversations/{t['conversation_id']}/turns/{t['id']}").json()[
            "duration_ms"
        ]
        // 80
        for t in turns
    )
    steps = value(after, "parley_batch_size_rows_count")
    assert value(after, "parley_batch_size_rows_sum") >= frames_stored > 0
    assert value(after, "parley_batch_size_rows_bucket", le="1.0") < steps
    [worker] = by_label(after, "parley_worker_batch_slots", "worker").items()
    assert worker[1] == 8

    # HTTP metrics by route template and status.
    assert (
        value(after, "parley_http_requests_total", method="POST", route=TURNS_ROUTE, status="202")
        == 4
    )
    assert stack.client.get(f"/no/such/{uuid.uuid4()}").status_code == 404
    http = scrape(stack)
    assert (
        value(http, "parley_http_requests_total", method="GET", route="unmatched", status="404")
        == 1
    )
    assert (
        value(http, "parley_http_request_duration_seconds_count", method="POST", route=TURNS_ROUTE)
        == 4
    )


def test_worker_count_and_batch_rows_follow_the_workers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=1, max_batch=3)
    wait_for(stack, lambda s: value(s, "parley_workers") == 1)
    stack.start_worker()
    two = wait_for(stack, lambda s: value(s, "parley_workers") == 2)
    assert set(by_label(two, "parley_worker_batch_slots", "worker").values()) == {3}

    # A long turn runs: its worker's batch holds one row while it does.
    cid = stack.conversation()
    long = stack.say(cid, 0, "A long turn, watched while it runs.", max_audio_length_ms=RUNNING_MS)
    running = wait_for(
        stack,
        lambda s: (
            sorted(by_label(s, "parley_worker_batch_rows", "worker").values()) == [0, 1]
            and value(s, "parley_jobs", status="running") == 1
        ),
    )
    assert value(running, "parley_queue_depth_jobs") == 0
    assert stack.client.delete(f"/v1/jobs/{long['job_id']}").status_code == 200
    # (the job counts are up to a second old: SQL is asked at most once a second)
    idle = wait_for(
        stack,
        lambda s: (
            set(by_label(s, "parley_worker_batch_rows", "worker").values()) == {0}
            and value(s, "parley_jobs", status="cancelled") == 1
        ),
    )
    assert value(idle, "parley_jobs", status="running") == 0
    # A cancelled turn is no stored turn: no latency observed for it.
    assert value(idle, "parley_turn_latency_seconds_count") == 0

    stack.stop_workers()
    gone = wait_for(stack, lambda s: value(s, "parley_workers") == 0)
    assert by_label(gone, "parley_worker_batch_rows", "worker") == {}
