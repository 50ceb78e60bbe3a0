"""The Celery app as both sides see it, and the one way to send it work: by task name, with
the arguments the contract (``shared.contract.tasks``) builds, so the API never imports the
worker. :func:`send_job` is how every side (the API, a worker handing off, recovery) sends a
job; a broker that is away leaves the job queued in SQL for recovery."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

from celery import Celery
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared.contract.tasks import ENCODE_VOICE_TASK, RUN_JOB_TASK, EncodeVoiceArgs, RunJobArgs
from shared.jobs.dispatch import release_claim
from shared.settings import Settings

log = logging.getLogger(__name__)

JobSender = Callable[[str, str], None]
"""``send(job_id, conversation_id)``: puts a job in the broker, or raises."""


def broker_keyprefix(settings: Settings) -> str:
    """What the broker's Redis keys start with (kombu's ``global_keyprefix``)."""
    return f"{settings.redis_prefix}:celery:"


def broker_queue_key(settings: Settings) -> str:
    """The Redis list holding the turn queue's messages (waiting for a worker)."""
    return broker_keyprefix(settings) + settings.queue_name


def queued_job_ids(redis: Redis, queue_key: str) -> set[str]:
    """The ids of the jobs whose messages wait in the broker's turn queue (``queue_key``, see
    :func:`broker_queue_key`): each message's body is kombu's envelope of the task's
    ``[args, kwargs, embed]``, the job id first among the args."""
    found = set()
    for raw in redis.lrange(queue_key, 0, -1):
        try:
            message = json.loads(raw)
            if message.get("headers", {}).get("task") != RUN_JOB_TASK:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            found.add(RunJobArgs.from_args(*json.loads(body)[0][:2]).job_id)
        except (ValueError, KeyError, IndexError, TypeError):
            log.warning("a message in %s is not a Parley job message; skipped", queue_key)
    return found


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the Redis broker, configured for long GPU tasks that must not be lost."""
    redis = settings.redis
    app = Celery("parley", broker=redis.broker_url, set_as_current=False)
    app.conf.update(
        # kombu's Redis (or Redis Sentinel) transport, but a broker loss never stops the
        # worker (see the module). Named here, it wins over the broker URL's scheme.
        broker_transport="shared.jobs.broker_transport:"
        + ("SentinelTransport" if redis.is_sentinel else "Transport"),
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": broker_keyprefix(settings),
            # A turn runs well under this; a task held longer by a dead worker is redelivered.
            "visibility_timeout": 3600,
            # Fail fast while Redis is away (the job stays queued in SQL; recovery sends it).
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            # On Sentinel: the service whose primary the sentinels name.
            **redis.broker_transport_options,
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        # Task events feed Flower's task views; off by default (see README, Observability).
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=settings.celery_events,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_job(celery: Celery, settings: Settings, job_id: str, conversation_id: str) -> None:
    """Send a job to the workers by task name (the API never imports the worker). The
    conversation id rides along so the worker can take the conversation's lock at once."""
    args = RunJobArgs(job_id=job_id, conversation_id=conversation_id)
    celery.send_task(RUN_JOB_TASK, args=args.to_args(), queue=settings.queue_name)


def enqueue_voice(celery: Celery, settings: Settings, voice_id: str) -> None:
    """Send a voice to the workers to be encoded (by task name, like a job)."""
    args = EncodeVoiceArgs(voice_id=voice_id)
    celery.send_task(ENCODE_VOICE_TASK, args=args.to_args(), queue=settings.queue_name)


def job_sender(celery: Celery, settings: Settings) -> JobSender:
    """The job sender of this Celery app: :func:`enqueue_job` bound to it."""

    def send(job_id: str, conversation_id: str) -> None:
        enqueue_job(celery, settings, job_id, conversation_id)

    return send


def send_job(
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    *,
    job_id: str | None,
    conversation_id: str,
) -> bool:
    """Send a claimed job (nothing when ``job_id`` is None); True when it went. A broker that
    is away releases the claim instead (see :func:`send_or_release`)."""
    if job_id is None:
        return False
    return send_or_release(
        sessions, job_sender(celery, settings), job_id=job_id, conversation_id=conversation_id
    )


def send_or_release(
    sessions: sessionmaker[Session],
    send: JobSender,
    *,
    job_id: str,
    conversation_id: str,
) -> bool:
    """Send a claimed job with ``send(job_id, conversation_id)``; True when it went.

    When the broker is unreachable, the claim is released instead: the job stays queued in SQL
    (the truth) and the recovery pass sends it once the broker answers again. Nothing is lost.
    """
    try:
        send(job_id, conversation_id)
        return True
    except Exception as exc:  # kombu and redis raise many types for a broker that is away
        log.warning("job %s: enqueue failed (%s); it waits in SQL for recovery", job_id, exc)
    with sessions() as session:
        release_claim(session, conversation_id=conversation_id, job_id=job_id)
    return False
