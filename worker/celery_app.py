"""The worker's Celery app: the shared configuration plus the one task, bound to a runtime."""

from __future__ import annotations

from celery import Celery

from shared.queue import RUN_JOB_TASK, create_celery
from worker.runtime import WorkerRuntime
from worker.turn_runner import run_job


def create_worker_app(rt: WorkerRuntime) -> Celery:
    app = create_celery(rt.settings)

    @app.task(name=RUN_JOB_TASK)
    def run_job_task(job_id: str, conversation_id: str | None = None) -> None:
        run_job(rt, job_id, conversation_id)

    return app
