"""Redis restarted empty mid-run: every accepted turn still completes, exactly once.

The test runs a Redis server of its own (the bundled ``redis-server`` on a free port; the
machine's shared Redis is never touched), kills it while turns are running and queued, checks
that the API keeps answering (and says degraded) while it is away, and restarts it empty. SQL
is the truth: recovery re-sends what the broker lost, context windows are rebuilt from SQL, and
every turn's codes equal what the engine speaks with exactly the earlier turns as context.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.expected import expected_codes, served_codes
from tests.servers import OwnRedis
from tests.stack import Stack, wait_until

LONGEST = {"max_audio_length_ms": 30_000, "temperature": 0}  # 375 frames: running at the kill
LONG = {"max_audio_length_ms": 6_000, "temperature": 0}  # queued in the broker at the kill
SHORT = {"max_audio_length_ms": 800, "temperature": 0}


class Listener(threading.Thread):
    """Streams one turn's PCM over HTTP into ``body`` (in a thread, as a client would)."""

    def __init__(self, stack: Stack, cid: str, tid: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.url = stack, f"/v1/conversations/{cid}/turns/{tid}/stream?format=pcm"
        self.body = b""
        self.status: int | None = None

    def run(self) -> None:
        with self.stack.client.stream("GET", self.url, timeout=300) as r:
            self.status = r.status_code
            for chunk in r.iter_bytes():
                self.body += chunk


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_redis_restarted_empty_loses_no_turn(
    own_redis: OwnRedis, make_stack: Callable[..., Stack], engine: Any, db_kind: str
) -> None:
    # One turn at a time, so that at the kill one turn runs and two wait in the broker.
    stack = make_stack(db_kind, workers=1, redis_url=own_redis.url, max_batch=1)
    # Three conversations: each has a long turn (running or queued in the broker at the
    # kill) and a short turn waiting behind it in SQL.
    posted: dict[str, list[dict[str, Any]]] = {}
    for i in range(3):
        cid = stack.conversation()
        posted[cid] = [
            stack.say(
                cid, 0, f"Conversation {i} opens with a long turn.", **(LONG if i else LONGEST)
            ),
            stack.say(cid, 1, f"And conversation {i} answers briefly.", **SHORT),
        ]
    first_cid = next(iter(posted))
    first_job = posted[first_cid][0]["job_id"]

    def well_under_way() -> bool:
        job = stack.client.get(f"/v1/jobs/{first_job}").json()
        return job["status"] == "running" and job["progress"]["frames"] >= 3

    wait_until(well_under_way, timeout=90, what="the first turn to run")
    listener = Listener(stack, first_cid, posted[first_cid][0]["id"])
    listener.start()
    wait_until(lambda: listener.body, timeout=30, what="the first streamed audio")

    own_redis.kill()
    # Redis is away: the API keeps answering from SQL and says it is degraded.
    ready = stack.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "degraded", ready.json()
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["redis"].startswith("unavailable")
    job = stack.client.get(f"/v1/jobs/{first_job}")
    assert job.status_code == 200 and job.json()["status"] in ("running", "succeeded")
    # A turn posted now is accepted (kept in SQL) and spoken once Redis is back.
    late_cid = stack.conversation()
    late = stack.say(late_cid, 0, "Posted while Redis was away.", **SHORT)
    assert late["status"] == "queued"
    posted[late_cid] = [late]
    time.sleep(1.5)
    own_redis.start()  # empty: no broker messages, heartbeats, context caches or streams

    for turns in posted.values():
        for turn in turns:
            done = stack.wait_job(turn["job_id"], timeout=240)
            assert done["status"] == "succeeded", (done, stack.worker_logs())
    wait_until(lambda: stack.client.get("/readyz").status_code == 200, timeout=30, what="ready")
    assert stack.client.get("/readyz").json()["status"] == "ready"

    # Exactly once: one row per post, in order, each turn's codes what the engine speaks with
    # exactly the earlier turns as context (so the rebuilt context windows were right).
    for cid, turns in posted.items():
        served = stack.client.get(f"/v1/conversations/{cid}/turns").json()
        assert [t["id"] for t in served] == [t["id"] for t in turns]
        assert all(t["status"] == "succeeded" for t in served)
        for k, turn in enumerate(served):
            params = SHORT
            if turn["text"].endswith("long turn."):
                params = LONGEST if cid == first_cid else LONG
            expected = expected_codes(
                engine, stack, cid, served[:k], turn["speaker"], turn["text"], **params
            )
            np.testing.assert_array_equal(served_codes(stack, cid, turn["id"]), expected)

    # The listener that was streaming across the restart got the whole stored audio.
    listener.join(timeout=60)
    assert not listener.is_alive() and listener.status == 200
    stored = stack.client.get(
        f"/v1/conversations/{first_cid}/turns/{posted[first_cid][0]['id']}/audio?format=wav"
    )
    assert stored.status_code == 200
    samples = stored.content[44:]  # the WAV's samples after its 44-byte header
    assert len(listener.body) == len(samples), (len(listener.body), len(samples))
    assert listener.body == samples
    logs = stack.worker_logs(tail=None)
    assert "lost its data" in logs  # the broker's messages were re-sent from SQL
    assert "waiting undispatched" in logs  # and what a failed enqueue left waiting was sent
