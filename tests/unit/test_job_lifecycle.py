"""Job lifecycle: every status change goes through ``shared.jobs.lifecycle``, which refuses a
change the contract's transition table forbids, and makes the legal ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.contract.params import TurnParams
from shared.contract.states import TRANSITIONS, IllegalTransition, JobStatus, check_transition
from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job
from shared.errors import Conflict
from shared.jobs.lifecycle import (
    Orphan,
    cancel_job,
    fail_job,
    move,
    requeue_orphan,
    start_job,
    succeed_job,
)
from shared.settings import Settings
from tests.claimed_jobs import claimed_job, start_attempt
from tests.stack import database

LEGAL = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}


@pytest.mark.parametrize("current", [s.value for s in JobStatus])
@pytest.mark.parametrize("target", [s.value for s in JobStatus])
def test_the_table_allows_exactly_the_changes_the_code_makes(current: str, target: str) -> None:
    if (current, target) in LEGAL:
        check_transition("j", current, target)
        assert JobStatus(target) in TRANSITIONS[JobStatus(current)]
    else:
        with pytest.raises(IllegalTransition, match=f"{current} → {target}"):
            check_transition("j", current, target)


def test_a_finished_job_never_changes_and_unknown_states_are_refused() -> None:
    for status in JobStatus:
        assert (TRANSITIONS[status] == frozenset()) == status.finished
    with pytest.raises(IllegalTransition):
        check_transition("j", "paused", "running")


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database("sqlite", tmp_path) as url:
        engine = make_engine(Settings(database_url=url))
        yield make_session_factory(engine)
        engine.dispose()


def _status(sessions: sessionmaker[Session], job_id: str) -> tuple[str, str]:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status, job.turn.status


def test_an_illegal_move_is_refused_and_changes_nothing(sessions: sessionmaker[Session]) -> None:
    cid, job_id = claimed_job(sessions)
    plan = start_attempt(sessions, cid, job_id)
    with sessions() as s:
        stored, _ = succeed_job(
            s, plan, codes=np.zeros((2, 4), np.int64), audio_flac=None, frame_ms=80
        )
    assert stored
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for target in JobStatus:
            with pytest.raises(IllegalTransition):
                move(job, job.turn, target)
        assert (job.status, job.turn.status) == ("succeeded", "succeeded")
    with sessions() as s:  # queued → succeeded skips running
        job = s.get(Job, claimed_job(sessions)[1])
        assert job is not None
        with pytest.raises(IllegalTransition, match="queued → succeeded"):
            move(job, job.turn, JobStatus.SUCCEEDED)
        assert job.status == "queued"


def test_legal_changes_pass_start_then_fail(sessions: sessionmaker[Session]) -> None:
    cid, job_id = claimed_job(sessions)
    assert _status(sessions, job_id) == ("queued", "queued")
    plan = start_attempt(sessions, cid, job_id)
    assert _status(sessions, job_id) == ("running", "running")
    assert plan.params == TurnParams()  # stored as {}: read once, with the contract's defaults
    with sessions() as s:
        fail_job(s, plan, code="engine_error", message="boom")
    assert _status(sessions, job_id) == ("failed", "failed")


def test_legal_changes_pass_requeue_then_cancel(sessions: sessionmaker[Session]) -> None:
    cid, job_id = claimed_job(sessions)
    start_attempt(sessions, cid, job_id, worker="w1")
    with sessions() as s:
        assert requeue_orphan(s, Orphan(job_id, cid, "w1")) == (True, job_id)
    assert _status(sessions, job_id) == ("queued", "queued")
    start_attempt(sessions, cid, job_id, worker="w2")
    with sessions() as s:
        job, _ = cancel_job(s, conversation_id=cid, job_id=job_id)
        s.commit()
    assert _status(sessions, job_id) == ("cancelled", "cancelled")
    with sessions() as s, pytest.raises(Conflict):  # finished: the API answers 409
        cancel_job(s, conversation_id=cid, job_id=job_id)


def test_a_queued_job_can_be_cancelled(sessions: sessionmaker[Session]) -> None:
    cid, job_id = claimed_job(sessions)
    with sessions() as s:
        cancel_job(s, conversation_id=cid, job_id=job_id)
        s.commit()
    assert _status(sessions, job_id) == ("cancelled", "cancelled")
    with sessions() as s:  # a cancelled job is not started
        start = start_job(
            s, job_id=job_id, conversation_id=cid, worker="w", model="m", test_model=True
        )
    assert start.plan is None
    assert _status(sessions, job_id) == ("cancelled", "cancelled")
