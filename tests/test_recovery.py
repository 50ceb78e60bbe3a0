"""A worker killed with SIGKILL mid-turn: another worker speaks the turn again, stored once."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis

from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job, TurnMedia
from shared.jobs.dispatch import claim_next
from shared.jobs.lifecycle import JobPlan, Orphan, requeue_orphan, start_job, succeed_job
from shared.jobs.queue import broker_queue_key, create_celery, enqueue_job, queued_job_ids
from shared.jobs.recovery import OrphanReconciler
from shared.redis_io.heartbeats import beat, live_workers
from shared.redis_io.keys import RedisKeys
from shared.services.conversations import create_conversation
from shared.services.turns import create_generated_turn
from shared.settings import Settings
from tests.expected import expected_codes, served_codes
from tests.stack import RUNNING_MS, Stack, database, wait_until
from worker.runtime import HeldJobs

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


def test_held_jobs_count_their_holders() -> None:
    held = HeldJobs()
    announced: list[list[str]] = []
    held.on_change = lambda: announced.append(held.snapshot())
    held.add("a")
    held.add("a")  # a duplicate message's task
    held.add("b")
    assert announced == [["a"], ["a"], ["a", "b"]]
    held.discard("a")
    assert held.snapshot() == ["a", "b"]  # still held by the task that runs it
    held.discard("a")
    held.discard("b")
    assert held.snapshot() == []


def test_only_the_current_attempt_can_store_the_turn(tmp_path: Path) -> None:
    """An attempt that was taken over (its worker judged gone, the job run again) finds its
    output discarded, even though the job is running again; the new attempt stores it."""
    with database("sqlite", tmp_path) as url:
        db = make_engine(Settings(database_url=url))
        sessions = make_session_factory(db)
        with sessions() as s:
            cid = create_conversation(s, owner="o", max_context_turns=5, metadata={}).id
            s.commit()
            job_id = create_generated_turn(
                s, owner="o", conversation_id=cid, speaker=0, text="t", params={}
            ).job.id
            s.commit()
        with sessions() as s:
            assert claim_next(s, cid) == job_id
            s.commit()

        def start(worker: str) -> JobPlan:
            with sessions() as s:
                plan = start_job(
                    s, job_id=job_id, conversation_id=cid, worker=worker, model="m", test_model=True
                ).plan
            assert plan is not None
            return plan

        first = start("w1")
        with sessions() as s:  # a stale view (w2 is not w1) changes nothing
            assert requeue_orphan(s, Orphan(job_id, cid, "w2")) == (False, None)
        with sessions() as s:
            assert requeue_orphan(s, Orphan(job_id, cid, "w1")) == (True, job_id)
        second = start("w2")
        assert (first.attempt, second.attempt) == (1, 2)
        codes = np.zeros((3, 4), dtype=np.int64)
        with sessions() as s:
            stored, _ = succeed_job(s, first, codes=codes, audio_flac=b"x", frame_ms=80)
        assert not stored
        with sessions() as s:
            stored, _ = succeed_job(s, second, codes=codes, audio_flac=b"y", frame_ms=80)
        assert stored
        with sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            assert (job.status, job.attempts, job.worker) == ("succeeded", 2, "w2")
            media = s.get(TurnMedia, job.turn_id)
            assert media is not None and media.audio_flac == b"y"
        db.dispose()


@dataclass
class OneJob:
    """A conversation with one job claimed (in the broker, as far as SQL knows) and a
    reconciler named "me" whose sends are recorded in ``sent``."""

    redis: Redis
    keys: RedisKeys
    sessions: Any
    cid: str
    job_id: str
    reconciler: OrphanReconciler
    sent: list[tuple[str, str]]


@contextmanager
def one_claimed_job(tmp_path: Path) -> Iterator[OneJob]:
    with database("sqlite", tmp_path) as url:
        settings = Settings(database_url=url, redis_prefix=f"parley-test-{uuid.uuid4().hex[:10]}")
        db = make_engine(settings)
        sessions = make_session_factory(db)
        redis = Redis.from_url(settings.redis_url)
        keys = RedisKeys(settings.redis_prefix)
        with sessions() as s:
            cid = create_conversation(s, owner="o", max_context_turns=5, metadata={}).id
            job_id = create_generated_turn(
                s, owner="o", conversation_id=cid, speaker=0, text="t", params={}
            ).job.id
            claim_next(s, cid)
            s.commit()
        sent: list[tuple[str, str]] = []
        reconciler = OrphanReconciler(
            sessions=sessions,
            redis=redis,
            keys=keys,
            me="me",
            enqueue=lambda j, c: sent.append((j, c)),
            broker_queue=broker_queue_key(settings),
        )
        try:
            yield OneJob(redis, keys, sessions, cid, job_id, reconciler, sent)
        finally:
            for key in redis.scan_iter(match=f"{settings.redis_prefix}:*"):
                redis.delete(key)
            redis.close()
            db.dispose()


def test_the_reconciler_waits_two_passes_and_judges_nobody_without_its_own_heartbeat(
    tmp_path: Path,
) -> None:
    with one_claimed_job(tmp_path) as one:
        with one.sessions() as s:
            start_job(
                s,
                job_id=one.job_id,
                conversation_id=one.cid,
                worker="gone",
                model="m",
                test_model=True,
            )
        reconciler = one.reconciler
        assert reconciler.run_once() == []  # no heartbeat of its own: Redis may be empty
        assert reconciler.run_once() == []
        beat(one.redis, one.keys, name="me", info={"name": "me"}, ttl_s=30)
        assert reconciler.run_once() == []  # a suspect, not yet an orphan
        assert reconciler.run_once() == [one.job_id]
        assert one.sent == [(one.job_id, one.cid)]
        assert reconciler.run_once() == []  # queued now, nothing more to do


def test_jobs_in_the_broker_are_sent_again_when_another_redis_took_its_place(
    tmp_path: Path,
) -> None:
    """The epoch marker names the Redis server that set it: a marker that is missing (Redis
    lost its data) or names another server (a failover promoted a replica that may lack the
    newest messages) re-sends what SQL says is in the broker; the same server re-sends nothing."""
    with one_claimed_job(tmp_path) as one:
        reconciler, redis, keys = one.reconciler, one.redis, one.keys
        assert reconciler.resend_if_redis_lost() == [one.job_id]  # no marker yet
        run_id = redis.info("server")["run_id"]
        assert redis.get(keys.epoch()) == run_id.encode()
        assert reconciler.resend_if_redis_lost() == []  # the same server kept its data
        redis.set(keys.epoch(), "f" * 40)  # as replicated from a primary now gone
        assert reconciler.resend_if_redis_lost() == [one.job_id]
        assert redis.get(keys.epoch()) == run_id.encode()
        assert reconciler.resend_if_redis_lost() == []
        assert one.sent == [(one.job_id, one.cid), (one.job_id, one.cid)]


def test_a_dispatched_job_in_no_queue_is_sent_again_unless_a_worker_holds_it(
    tmp_path: Path,
) -> None:
    with one_claimed_job(tmp_path) as one:
        reconciler = one.reconciler
        assert reconciler.resend_lost_messages() == []  # no heartbeat of its own: judge nobody
        beat(one.redis, one.keys, name="w2", info={"name": "w2", "jobs": [one.job_id]}, ttl_s=30)
        beat(one.redis, one.keys, name="me", info={"name": "me", "jobs": []}, ttl_s=30)
        assert reconciler.resend_lost_messages() == []  # held by a live worker
        assert reconciler.resend_lost_messages() == []
        one.redis.delete(one.keys.worker("w2"))  # that worker died holding it, before it ran
        assert reconciler.resend_lost_messages() == []  # unseen once: not yet
        assert reconciler.resend_lost_messages() == [one.job_id]
        assert one.sent == [(one.job_id, one.cid)]


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
