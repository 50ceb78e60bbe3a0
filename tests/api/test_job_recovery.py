"""Job recovery (``shared.jobs.recovery``) driven in-process against SQL and Redis, no worker:
only the current attempt can store a turn, the reconciler waits two passes and judges nobody
without a heartbeat, and jobs the broker lost are sent again unless a worker holds them. A
worker killed mid-turn: tests/integration/test_job_recovery.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis

from shared.contract.heartbeat import WorkerBeat
from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job, TurnMedia
from shared.jobs.dispatch import claim_next
from shared.jobs.lifecycle import Orphan, requeue_orphan, start_job, succeed_job
from shared.jobs.queue import broker_queue_key
from shared.jobs.recovery import OrphanReconciler
from shared.redis_io.heartbeats import beat
from shared.redis_io.keys import RedisKeys
from shared.services.conversations import create_conversation
from shared.services.turns import create_generated_turn
from shared.settings import Settings
from tests.claimed_jobs import claimed_job, start_attempt
from tests.stack import database


def test_only_the_current_attempt_can_store_the_turn(tmp_path: Path) -> None:
    """An attempt that was taken over (its worker judged gone, the job run again) finds its
    output discarded, even though the job is running again; the new attempt stores it."""
    with database("sqlite", tmp_path) as url:
        db = make_engine(Settings(database_url=url))
        sessions = make_session_factory(db)
        cid, job_id = claimed_job(sessions, text="t")
        first = start_attempt(sessions, cid, job_id, "w1")
        with sessions() as s:  # a stale view (w2 is not w1) changes nothing
            assert requeue_orphan(s, Orphan(job_id, cid, "w2")) == (False, None)
        with sessions() as s:
            assert requeue_orphan(s, Orphan(job_id, cid, "w1")) == (True, job_id)
        second = start_attempt(sessions, cid, job_id, "w2")
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
        beat(one.redis, one.keys, name="me", info=WorkerBeat(name="me"), ttl_s=30)
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
        beat(
            one.redis, one.keys, name="w2", info=WorkerBeat(name="w2", jobs=[one.job_id]), ttl_s=30
        )
        beat(one.redis, one.keys, name="me", info=WorkerBeat(name="me", jobs=[]), ttl_s=30)
        assert reconciler.resend_lost_messages() == []  # held by a live worker
        assert reconciler.resend_lost_messages() == []
        one.redis.delete(one.keys.worker("w2"))  # that worker died holding it, before it ran
        assert reconciler.resend_lost_messages() == []  # unseen once: not yet
        assert reconciler.resend_lost_messages() == [one.job_id]
        assert one.sent == [(one.job_id, one.cid)]
