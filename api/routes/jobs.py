"""/v1/jobs/{jid}: poll and cancel."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, ReadSessionDep, SessionDep, StateDep
from api.presenters import job_out
from api.schemas.core import JobOut
from api.services.turn_intake import dispatch
from shared.jobs.lifecycle import cancel_job
from shared.services.jobs import announce_cancel, get_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get(state: StateDep, session: ReadSessionDep, owner: OwnerDep, job_id: str) -> JobOut:
    return job_out(get_job(session, owner=owner, job_id=job_id), redis=state.redis, keys=state.keys)


@router.delete("/{job_id}", response_model=JobOut)
def cancel(state: StateDep, session: SessionDep, owner: OwnerDep, job_id: str) -> JobOut:
    conversation_id = get_job(session, owner=owner, job_id=job_id).conversation_id
    session.commit()  # end the read; cancel_job starts with the conversation lock
    job, next_job_id = cancel_job(session, conversation_id=conversation_id, job_id=job_id)
    session.commit()
    announce_cancel(state.redis, state.keys, job_id)
    if next_job_id is not None:
        dispatch(state, conversation_id=conversation_id, job_id=next_job_id)
    return job_out(job, redis=state.redis, keys=state.keys)
