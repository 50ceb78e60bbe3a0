"""A job in SQL at the point a worker takes it: a conversation with one generated turn, its job
claimed (dispatched), and a worker's attempt started. Used by tests/unit/test_job_lifecycle.py
and tests/api/test_job_recovery.py."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.dispatch import claim_next
from shared.jobs.lifecycle import JobPlan, start_job
from shared.services.conversations import create_conversation
from shared.services.turns import create_generated_turn


def claimed_job(sessions: sessionmaker[Session], text: str = "hi") -> tuple[str, str]:
    """A conversation with one generated turn, its job claimed (dispatched): (cid, job_id)."""
    with sessions() as s:
        cid = create_conversation(s, owner="o", max_context_turns=5, metadata={}).id
        s.commit()
        job_id = create_generated_turn(
            s, owner="o", conversation_id=cid, speaker=0, text=text, params={}
        ).job.id
        s.commit()
        assert claim_next(s, cid) == job_id
        s.commit()
    return cid, job_id


def start_attempt(
    sessions: sessionmaker[Session], cid: str, job_id: str, worker: str = "w"
) -> JobPlan:
    """``worker`` starts an attempt at the job; its plan."""
    with sessions() as s:
        plan = start_job(
            s, job_id=job_id, conversation_id=cid, worker=worker, model="m", test_model=True
        ).plan
    assert plan is not None
    return plan
