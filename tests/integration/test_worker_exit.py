"""A worker rides out a brief broker loss and exits (to be replaced) after a long one.

Its own Redis, killed by the test (never the machine's shared one). The brief loss comes right
after turns are accepted, while the worker holds unacknowledged messages: the moment at which
kombu's Redis channel used to fail on closing and stop the worker for good.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.servers import OwnRedis
from tests.stack import Stack, wait_until

SHORT = {"max_audio_length_ms": 800, "temperature": 0}


def worker_record(stack: Stack) -> dict[str, Any]:
    keys = list(stack.redis.scan_iter(match=stack.keys.workers_pattern()))
    assert len(keys) == 1, keys
    return dict(json.loads(stack.redis.get(keys[0]) or b"{}"))


def healthcheck(stack: Stack) -> subprocess.CompletedProcess[str]:
    """``parley healthcheck worker`` (a container's healthcheck) with the stack's settings."""
    return subprocess.run(
        [sys.executable, "-m", "parley", "healthcheck", "worker"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_brief_broker_loss_after_accepting_is_ridden_out(
    own_redis: OwnRedis, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack("sqlite", workers=1, redis_url=own_redis.url)
    worker = stack.workers[0]
    wait_until(lambda: worker_record(stack).get("consuming"), timeout=60, what="consuming")
    jobs = []
    for i in range(3):
        cid = stack.conversation()
        for k in (0, 1):
            jobs.append(stack.say(cid, k, f"Turn {k} of conversation {i}.", **SHORT)["job_id"])
    own_redis.kill()
    time.sleep(3)
    own_redis.start()  # empty
    for job_id in jobs:
        assert stack.wait_job(job_id, timeout=120)["status"] == "succeeded", stack.worker_logs()
    assert worker.poll() is None, stack.worker_logs()  # the same process, still serving
    record = wait_until(lambda: worker_record(stack), timeout=30, what="a heartbeat")
    assert record["pid"] == worker.pid and record["consuming"] is True
    cid = stack.conversation()
    after = stack.say(cid, 0, "After the broker came back.", **SHORT)
    assert stack.wait_job(after["job_id"], timeout=60)["status"] == "succeeded"
    assert "Unrecoverable error" not in stack.worker_logs(tail=None)


@pytest.mark.parametrize("moment", ["idle", "never_reached"])
def test_a_worker_without_its_broker_too_long_exits_with_code_3(
    own_redis: OwnRedis, make_stack: Callable[..., Stack], moment: str
) -> None:
    stack = make_stack("sqlite", workers=0, redis_url=own_redis.url, worker_broker_timeout_s=3)
    if moment == "never_reached":
        own_redis.kill()
        worker = stack.start_worker(wait=False)
    else:
        worker = stack.start_worker()
        wait_until(lambda: worker_record(stack).get("consuming"), timeout=60, what="consuming")
        healthy = healthcheck(stack)
        assert healthy.returncode == 0 and healthy.stdout.startswith("healthy: parley-")
        own_redis.kill()
        unhealthy = healthcheck(stack)
        assert unhealthy.returncode == 1 and "Redis does not answer" in unhealthy.stderr
    code = worker.wait(timeout=120)
    assert code == 3, stack.worker_logs()
    assert "this worker cannot serve and exits with code 3" in stack.worker_logs(tail=None)
