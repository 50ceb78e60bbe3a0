"""A worker killed with SIGKILL mid-turn: another worker speaks the turn again, stored once;
a worker behind the SQLite write lock is not taken for dead, and a duplicate or a dying
worker's message is handled. The reconciler in-process: tests/api/test_job_recovery.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from shared.jobs.queue import broker_queue_key, create_celery, enqueue_job, queued_job_ids
from shared.redis_io.heartbeats import live_workers
from tests.expected import expected_codes, served_codes
from tests.stack import RUNNING_MS, Stack, wait_until

TEXT = "A long turn whose worker is killed half way."
PARAMS = {"max_audio_length_ms": 30_000, "temperature": 0}


def wait_under_way(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job, once it is running and has made a few frames."""
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = stack.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"].get("frames", 0) >= 5:
            return job
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_a_killed_worker_s_turn_is_spoken_again_and_stored_once(
    make_stack: Callable[..., Stack], engine: Any, db_kind: str
) -> None:
    stack = make_stack(db_kind, workers=2)
    cid = stack.conversation()
    turn = stack.say(cid, 0, TEXT, **PARAMS)
    job = wait_under_way(stack, turn["job_id"])
    first_worker = job["worker"]
    pids = {w["name"]: w["pid"] for w in live_workers(stack.redis, stack.keys)}
    os.kill(pids[first_worker], signal.SIGKILL)
    killed_at = time.monotonic()
    # Ahead of the recovery, the next turn waits its turn: order holds across the crash.
    second = stack.say(cid, 1, "And then the next turn.", max_audio_length_ms=800)

    done = stack.wait_job(turn["job_id"], timeout=120)
    recovered_in = time.monotonic() - killed_at
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["worker"] != first_worker, done
    # Heartbeat 1 s: its key expires within 3 s, then two recovery passes; plus the turn.
    assert recovered_in < 60, recovered_in

    codes = served_codes(stack, cid, turn["id"])
    np.testing.assert_array_equal(codes, expected_codes(engine, stack, cid, [], 0, TEXT, **PARAMS))
    got = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}").json()
    assert got["frames"] == 375 and got["duration_ms"] == 30_000

    after = stack.wait_job(second["job_id"])
    assert after["status"] == "succeeded" and after["attempts"] == 1, after
    assert after["started_at"] >= done["finished_at"]
    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [t["index"] for t in turns] == [0, 1]  # one row per turn: nothing stored twice
    assert "vanished; the turn is queued again" in stack.worker_logs(tail=None)


def test_a_worker_behind_the_sqlite_write_lock_is_not_taken_for_dead(
    make_stack: Callable[..., Stack],
) -> None:
    """Its heartbeat touches Redis only: however long the database keeps a worker waiting, the
    worker stays alive to the others, and its turn is spoken once."""
    stack = make_stack("sqlite", workers=2)
    cid = stack.conversation()
    turn = stack.say(cid, 0, TEXT, max_audio_length_ms=RUNNING_MS, temperature=0)
    wait_under_way(stack, turn["job_id"])
    names = {w["name"] for w in live_workers(stack.redis, stack.keys)}
    assert len(names) == 2
    # Another writer holds SQLite's write lock longer than a heartbeat key lives (3 s), plus
    # two recovery passes: every read-write transaction of the workers waits behind it.
    path = stack.settings.database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            alive = {w["name"] for w in live_workers(stack.redis, stack.keys)}
            assert alive == names, f"{names - alive} taken for dead while SQLite was locked"
            time.sleep(0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    done = stack.wait_job(turn["job_id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert "vanished" not in stack.worker_logs(tail=None)


def test_a_duplicate_message_for_a_running_job_leaves_it_held(
    make_stack: Callable[..., Stack],
) -> None:
    """A message re-sent for a job (as after Redis lost its data) that reaches the very worker
    running it is skipped, and the job stays held: the worker's heartbeat goes on listing it,
    so recovery never takes it for abandoned, and the turn is spoken once."""
    stack = make_stack("sqlite", workers=1)
    cid = stack.conversation()
    turn = stack.say(cid, 0, TEXT, max_audio_length_ms=RUNNING_MS, temperature=0)
    job_id = turn["job_id"]
    wait_under_way(stack, job_id)
    enqueue_job(create_celery(stack.settings), stack.settings, job_id, cid)
    deadline = time.monotonic() + 30
    while f"job {job_id} is running; skipping" not in stack.worker_logs(tail=None):
        assert time.monotonic() < deadline, stack.worker_logs()
        time.sleep(0.05)
    until = time.monotonic() + 3 * stack.settings.worker_heartbeat_s
    while time.monotonic() < until:  # beats after the duplicate's task let go of the job
        (worker,) = live_workers(stack.redis, stack.keys)
        status = stack.client.get(f"/v1/jobs/{job_id}").json()["status"]
        assert job_id in worker["jobs"] or status != "running", (worker, status)
        time.sleep(0.1)
    done = stack.wait_job(job_id, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done


def test_a_message_a_dying_worker_took_is_sent_again(make_stack: Callable[..., Stack]) -> None:
    """kombu pops a message, then records it as unacknowledged: a worker killed in between
    takes it along. SQL still says the job is in the broker; recovery finds it in no queue and
    held by no worker, and sends it again."""
    stack = make_stack("sqlite", workers=1)
    # Its first pass marks this Redis as known (the epoch), so that no re-send after a lost
    # Redis rescues the turn below; then no worker runs while its message is taken.
    wait_until(lambda: stack.redis.exists(stack.keys.epoch()), timeout=30, what="the epoch")
    stack.stop_workers()
    cid = stack.conversation()
    turn = stack.say(cid, 0, "A turn whose message a dying worker took.", max_audio_length_ms=800)
    queue_key = broker_queue_key(stack.settings)
    assert queued_job_ids(stack.redis, queue_key) == {turn["job_id"]}
    assert stack.redis.rpop(queue_key) is not None  # what the dying worker's pop did
    assert queued_job_ids(stack.redis, queue_key) == set()
    stack.start_worker()
    done = stack.wait_job(turn["job_id"], timeout=90)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert "in no queue and held by no worker" in stack.worker_logs(tail=None)
