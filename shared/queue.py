"""The Celery app as both sides see it, and enqueueing by task name."""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

RUN_JOB_TASK = "parley.run_job"


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the Redis broker, configured for long GPU tasks that must not be lost."""
    app = Celery("parley", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": f"{settings.redis_prefix}:celery:",
            # A turn runs well under this; a task held longer by a dead worker is redelivered.
            "visibility_timeout": 3600,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_job(celery: Celery, settings: Settings, job_id: str, conversation_id: str) -> None:
    """Send a job to the workers by task name (the API never imports the worker). The
    conversation id rides along so the worker can take the conversation's lock at once."""
    celery.send_task(RUN_JOB_TASK, args=[job_id, conversation_id], queue=settings.queue_name)
