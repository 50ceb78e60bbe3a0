"""The worker's Celery app: the shared configuration plus its tasks, bound to a runtime."""

from __future__ import annotations

from celery import Celery

from shared.jobs.queue import ENCODE_VOICE_TASK, RUN_JOB_TASK, create_celery
from worker.runtime import WorkerRuntime
from worker.turn_runner import run_job
from worker.voices import encode_voice


def create_worker_app(rt: WorkerRuntime) -> Celery:
    app = create_celery(rt.settings)

    @app.task(name=RUN_JOB_TASK)
    def run_job_task(job_id: str, conversation_id: str | None = None) -> None:
        run_job(rt, job_id, conversation_id)

    @app.task(name=ENCODE_VOICE_TASK)
    def encode_voice_task(voice_id: str) -> None:
        encode_voice(rt, voice_id)

    return app
