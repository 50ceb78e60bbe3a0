"""`parley flower`: Flower as a real process on the test stack's broker, under its key prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from shared.redis_io.heartbeats import live_workers
from tests.servers import free_port
from tests.stack import Stack


@contextmanager
def flower(stack: Stack) -> Iterator[httpx.Client]:
    """`parley flower` with the stack's settings; a client on its HTTP API."""
    port = free_port()
    log = stack.tmp / "flower.log"
    env = {**os.environ, **stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "flower", f"--port={port}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthcheck").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flower did not come up:\n{log.read_text()}")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=20)


def poll(get: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = get()
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def queue_lengths(client: httpx.Client) -> dict[str, int]:
    r = client.get("/api/queues/length")
    assert r.status_code == 200, r.text
    return {q["name"]: q["messages"] for q in r.json()["active_queues"]}


def test_flower_sees_the_queue_and_the_workers(make_stack: Callable[..., Stack]) -> None:
    """Task events off (the default): Flower still reads queue lengths from the broker and asks
    the workers (remote control) who they are and what they consume."""
    stack = make_stack("sqlite", workers=0)
    queue = stack.settings.queue_name
    with flower(stack) as client:
        turns = [stack.say(stack.conversation(), 0, "Waiting in the broker.") for _ in range(2)]
        assert poll(lambda: queue_lengths(client), lambda q: q.get(queue) == 2) == {queue: 2}

        stack.start_worker()
        [name] = [w["name"] for w in live_workers(stack.redis, stack.keys)]
        workers = poll(
            lambda: client.get("/api/workers", params={"refresh": "1"}).json(),
            lambda w: name in w,
        )
        assert [q["name"] for q in workers[name]["active_queues"]] == [queue]
        assert workers[name]["stats"]["pool"]["max-concurrency"] == stack.settings.max_batch
        for turn in turns:
            assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
        assert poll(lambda: queue_lengths(client), lambda q: q.get(queue) == 0) == {queue: 0}
        # Without task events Flower has no task history.
        assert client.get("/api/tasks").json() == {}


def test_flower_shows_tasks_with_events_on(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=1, celery_events="true")
    with flower(stack) as client:
        turn = stack.say(stack.conversation(), 0, "Seen by Flower.")
        assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
        tasks = poll(
            lambda: client.get("/api/tasks").json(),
            lambda t: any(v.get("state") == "SUCCESS" for v in t.values()),
        )
        done = [t for t in tasks.values() if t.get("state") == "SUCCESS"]
        assert done and all(t["name"] == "parley.run_job" for t in done), tasks
        assert any(turn["job_id"] in t["args"] for t in done)
        # the worker's event heartbeats make it "online" in Flower
        [name] = [w["name"] for w in live_workers(stack.redis, stack.keys)]
        status = poll(
            lambda: client.get("/api/workers", params={"status": "true"}).json(),
            lambda s: s.get(name) is True,
        )
        assert status.get(name) is True, status
