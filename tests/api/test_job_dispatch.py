"""The ordering core on real SQLite and PostgreSQL: one job of a conversation at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from threading import Barrier, Thread

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job, JobStatus
from shared.jobs.dispatch import claim_next, lock_conversation
from shared.services.conversations import create_conversation
from shared.services.turns import create_generated_turn
from shared.settings import Settings
from tests.stack import database


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database(request.param, tmp_path) as url:
        engine = make_engine(Settings(database_url=url))
        yield make_session_factory(engine)
        engine.dispose()


def _conversation_with_turns(sessions: sessionmaker[Session], n: int) -> tuple[str, list[str]]:
    with sessions() as s:
        cid = create_conversation(s, owner="o", max_context_turns=5, metadata={}).id
        s.commit()
        jobs = []
        for i in range(n):
            turn = create_generated_turn(
                s, owner="o", conversation_id=cid, speaker=i % 2, text=f"t{i}", params={}
            )
            jobs.append(turn.job.id)
            s.commit()
    return cid, jobs


def _claim(sessions: sessionmaker[Session], cid: str) -> str | None:
    with sessions() as s:
        lock_conversation(s, cid)
        job_id = claim_next(s, cid)
        s.commit()
        return job_id


def _finish(sessions: sessionmaker[Session], job_id: str, status: JobStatus) -> None:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = status
        s.commit()


def test_jobs_are_claimed_one_at_a_time_in_turn_order(sessions: sessionmaker[Session]) -> None:
    cid, jobs = _conversation_with_turns(sessions, 3)
    assert _claim(sessions, cid) == jobs[0]
    assert _claim(sessions, cid) is None  # jobs[0] is in the broker
    _finish(sessions, jobs[0], JobStatus.RUNNING)
    assert _claim(sessions, cid) is None  # ... and now running
    _finish(sessions, jobs[0], JobStatus.SUCCEEDED)
    assert _claim(sessions, cid) == jobs[1]
    _finish(sessions, jobs[1], JobStatus.FAILED)  # a failed turn does not stop the conversation
    assert _claim(sessions, cid) == jobs[2]
    _finish(sessions, jobs[2], JobStatus.CANCELLED)
    assert _claim(sessions, cid) is None  # nothing waits


def test_turn_indices_are_dense_and_ordered(sessions: sessionmaker[Session]) -> None:
    cid, _ = _conversation_with_turns(sessions, 4)
    with sessions() as s:
        indices = [j.turn.index for j in s.query(Job).filter_by(conversation_id=cid)]
    assert sorted(indices) == [0, 1, 2, 3]


def test_concurrent_claims_dispatch_exactly_once(sessions: sessionmaker[Session]) -> None:
    cid, jobs = _conversation_with_turns(sessions, 2)
    results: list[str | None] = []
    barrier = Barrier(6)

    def claim() -> None:
        barrier.wait()
        results.append(_claim(sessions, cid))

    threads = [Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r in results if r) == [jobs[0]]
