"""Job states and the only changes between them.

``TRANSITIONS`` is taken from what the code does (``shared.jobs.lifecycle`` makes every
change, and checks each one here):

- queued → running: a worker starts the job;
- running → succeeded | failed: its worker stores the turn, or fails it;
- queued | running → cancelled: the API cancels it;
- running → queued: recovery puts back the job of a worker that vanished.

A finished job (succeeded, failed, cancelled) never changes again. A turn carries its job's
status.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's life: queued → running → succeeded | failed | cancelled.

    A turn carries the status of its job.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A job status change the table forbids: a bug in the caller, never the user's error."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id}: {current} → {target} is not a legal transition")
        self.job_id, self.current, self.target = job_id, current, target


def check_transition(job_id: str, current: str, target: str) -> None:
    """Raise :class:`IllegalTransition` unless the table allows ``current`` → ``target``."""
    try:
        allowed = target in TRANSITIONS[JobStatus(current)]
    except ValueError:  # a status no JobStatus names
        allowed = False
    if not allowed:
        raise IllegalTransition(job_id, current, target)


class CancelFlag(StrEnum):
    """What a running job's cancel flag (``RedisKeys.job_cancel``) holds, as the worker reads
    it every frame: a cancel drops the turn (the API has already marked it cancelled); an
    interrupt (barge-in) stops it and keeps what was spoken as the stored turn."""

    CANCEL = "1"
    INTERRUPT = "interrupt"
