"""The soak's (``bench/soak.py``) broker look-up on the machine's Redis: a job is found in the
queue, unacknowledged, nowhere, or not sent. The soak run itself: tests/ops/test_soak.py."""

from __future__ import annotations

import base64
import json
import uuid

from redis import Redis

from bench.soak import (
    broker_whereabouts,
)
from shared.jobs.queue import broker_keyprefix, broker_queue_key
from shared.settings import Settings
from tests.stack import REDIS_URL


def _kombu_message(job_id: str) -> str:
    body = base64.b64encode(json.dumps([[job_id, "conversation"], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "properties": {"body_encoding": "base64"}})


def test_broker_whereabouts_finds_a_job_in_the_queue_or_unacked() -> None:
    env = {"PARLEY_REDIS_URL": REDIS_URL, "PARLEY_REDIS_PREFIX": f"soak-{uuid.uuid4().hex[:8]}"}
    settings = Settings(redis_prefix=env["PARLEY_REDIS_PREFIX"])
    redis = Redis.from_url(REDIS_URL)
    queue, unacked = broker_queue_key(settings), broker_keyprefix(settings) + "unacked"
    try:
        redis.lpush(queue, _kombu_message("job-in-queue"))
        redis.hset(unacked, "tag", json.dumps([json.loads(_kombu_message("job-taken")), "", "q"]))
        where = broker_whereabouts(
            env, {"job-in-queue": True, "job-taken": True, "job-gone": True, "job-behind": False}
        )
    finally:
        redis.delete(queue, unacked)
        redis.close()
    assert where == {
        "job-in-queue": "queue",
        "job-taken": "unacked",
        "job-gone": "nowhere",
        "job-behind": "not sent",
    }
