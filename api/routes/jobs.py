"""/v1/jobs/{jid}: poll, cancel and interrupt."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, ReadSessionDep, SessionDep, StateDep
from api.presenters import job_out
from api.schemas.core import JobOut
from api.services import job_control
from shared.services.jobs import get_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get(state: StateDep, session: ReadSessionDep, owner: OwnerDep, job_id: str) -> JobOut:
    return job_out(get_job(session, owner=owner, job_id=job_id), redis=state.redis, keys=state.keys)


@router.delete("/{job_id}", response_model=JobOut)
def cancel(state: StateDep, session: SessionDep, owner: OwnerDep, job_id: str) -> JobOut:
    conversation_id = get_job(session, owner=owner, job_id=job_id).conversation_id
    session.commit()  # end the read; cancel_job starts with the conversation lock
    job = job_control.cancel(state, session, conversation_id=conversation_id, job_id=job_id)
    return job_out(job, redis=state.redis, keys=state.keys)


@router.post(
    "/{job_id}/interrupt",
    response_model=JobOut,
    summary="Interrupt a job (barge-in): a running turn stops and keeps what was spoken",
    responses={409: {"description": "the job has finished (job_finished)"}},
)
def interrupt(state: StateDep, session: SessionDep, owner: OwnerDep, job_id: str) -> JobOut:
    conversation_id = get_job(session, owner=owner, job_id=job_id).conversation_id
    session.commit()
    job = job_control.interrupt(state, session, conversation_id=conversation_id, job_id=job_id)
    return job_out(job, redis=state.redis, keys=state.keys)
