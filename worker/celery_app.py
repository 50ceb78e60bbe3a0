"""The worker's Celery app: the shared configuration plus its tasks, bound to a runtime. Each
task unpacks its arguments with the contract's class for them (``shared.contract.tasks``)."""

from __future__ import annotations

from celery import Celery

from shared.contract.tasks import ENCODE_VOICE_TASK, RUN_JOB_TASK, EncodeVoiceArgs, RunJobArgs
from shared.jobs.queue import create_celery
from worker.runtime import WorkerRuntime
from worker.turn_runner import run_job
from worker.voice_encoding import encode_voice


def create_worker_app(rt: WorkerRuntime) -> Celery:
    app = create_celery(rt.settings)

    @app.task(name=RUN_JOB_TASK)
    def run_job_task(job_id: str, conversation_id: str | None = None) -> None:
        args = RunJobArgs.from_args(job_id, conversation_id)
        run_job(rt, args.job_id, args.conversation_id)

    @app.task(name=ENCODE_VOICE_TASK)
    def encode_voice_task(voice_id: str) -> None:
        encode_voice(rt, EncodeVoiceArgs.from_args(voice_id).voice_id)

    return app
