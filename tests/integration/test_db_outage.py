"""The database goes away mid-turn: the API answers 503 with a clear error and writes nothing
half, the worker keeps the turn in hand until the database is back, and everything recovers
by itself.

PostgreSQL: a cluster of the test's own, stopped as a crash would (``pg_ctl -m immediate``).
SQLite: the database file made unreadable (moved away, a directory in its place), then put back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from shared.db.engine import make_engine, make_session_factory
from shared.db.migrate import upgrade
from shared.db.models import Conversation, Job, Turn
from shared.settings import Settings
from tests.expected import expected_codes, served_codes
from tests.pg_cluster import parley_cluster
from tests.stack import Stack

LONG = {"max_audio_length_ms": 30_000, "temperature": 0}  # 375 frames: running at the outage
SHORT = {"max_audio_length_ms": 800, "temperature": 0}


@dataclass
class Outage:
    url: str
    stop: Callable[[], None]
    start: Callable[[], None]


@contextmanager
def pg_outage() -> Iterator[Outage]:
    with parley_cluster() as (cluster, url):
        yield Outage(url, cluster.stop, cluster.start)


@contextmanager
def sqlite_outage(tmp: Path) -> Iterator[Outage]:
    path = tmp / "parley.db"
    away = tmp / "parley.db.away"
    url = f"sqlite:///{path}"
    upgrade(Settings(database_url=url))

    def stop() -> None:
        os.rename(path, away)
        path.mkdir()  # what stands at the path now is no database

    def start() -> None:
        path.rmdir()
        os.rename(away, path)

    yield Outage(url, stop, start)


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    if request.param == "sqlite":
        with sqlite_outage(tmp_path) as found:
            yield found
    else:
        with pg_outage() as found:
            yield found


def rows(url: str) -> tuple[int, int, int]:
    """(conversations, turns, jobs) as SQL holds them."""
    engine = make_engine(Settings(database_url=url))
    try:
        with make_session_factory(engine)() as session:
            return (
                session.scalar(select(func.count()).select_from(Conversation)) or 0,
                session.scalar(select(func.count()).select_from(Turn)) or 0,
                session.scalar(select(func.count()).select_from(Job)) or 0,
            )
    finally:
        engine.dispose()


def test_a_database_outage_loses_nothing_and_heals_itself(
    outage: Outage, tiny_model_dir: Path, tmp_path: Path, engine: Any
) -> None:
    stack = Stack(db_url=outage.url, tmp=tmp_path, model=str(tiny_model_dir))
    try:
        stack.start_worker()
        cid = stack.conversation()
        first = stack.say(cid, 0, "A long turn that outlives the database.", **LONG)
        deadline = time.monotonic() + 90
        while True:
            job = stack.client.get(f"/v1/jobs/{first['job_id']}").json()
            if job["status"] == "running" and job["progress"]["frames"] >= 3:
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.02)

        outage.stop()
        # While the database is away: a clear 503 for anything that needs it, nothing written.
        for method, path, body in [
            ("GET", f"/v1/jobs/{first['job_id']}", None),
            ("POST", "/v1/conversations", {}),
            ("POST", f"/v1/conversations/{cid}/turns", {"speaker": 1, "text": "Lost?"}),
            ("GET", f"/v1/conversations/{cid}/turns", None),
        ]:
            r = stack.client.request(method, path, json=body)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "database_unavailable"
        ready = stack.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert ready.json()["checks"]["database"].startswith("unavailable")
        assert stack.client.get("/healthz").status_code == 200
        # The turn finishes generating meanwhile (its progress is in Redis) and its worker
        # waits, turn in hand, to store it.
        frames_key = stack.keys.job_frames(first["job_id"])
        deadline = time.monotonic() + 120
        while int(stack.redis.get(frames_key) or 0) < LONG["max_audio_length_ms"] // 80:
            assert time.monotonic() < deadline, stack.worker_logs()
            time.sleep(0.1)
        time.sleep(1)
        outage.start()

        # Recovered by itself: the worker stored the turn it kept (one attempt), the API answers.
        done = stack.wait_job(first["job_id"], timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert rows(outage.url) == (1, 1, 1)  # the refused posts left nothing behind
        second = stack.say(cid, 1, "And the conversation goes on.", **SHORT)
        assert stack.wait_job(second["job_id"])["status"] == "succeeded"
        turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
        assert [t["id"] for t in turns] == [first["id"], second["id"]]
        for k, (turn, params) in enumerate(zip(turns, [LONG, SHORT], strict=True)):
            expected = expected_codes(
                engine, stack, cid, turns[:k], turn["speaker"], turn["text"], **params
            )
            np.testing.assert_array_equal(served_codes(stack, cid, turn["id"]), expected)
        assert stack.client.get("/readyz").json()["status"] == "ready"
        assert "database unavailable" in stack.worker_logs(tail=None)
    finally:
        stack.close()
