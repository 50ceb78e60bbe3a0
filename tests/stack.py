"""A whole Parley stack for tests: real SQL (SQLite or PostgreSQL), the machine's Redis under a
key prefix of its own, the real API app, and real ``parley worker`` processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from api.app import create_app
from shared.db.migrate import upgrade
from shared.redis_io.heartbeats import live_workers
from shared.redis_io.keys import RedisKeys
from shared.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
FINISHED = {"succeeded", "failed", "cancelled"}
# A turn a test acts on while it runs (cancels it, kills its worker, watches it): 1875 frames,
# near the model's 2048 positions. The tiny model makes a frame in a few ms, so a 375-frame
# turn can end in about a second, before a slow (shared, busy) test process gets to act.
RUNNING_MS = 150_000
# One segment (219 characters; a longer text is cut into segments) whose text and a RUNNING_MS
# budget are past the model's 2048 positions: the engine refuses it, prompt_too_long.
TOO_LONG_TEXT = " ".join(["word"] * 44)


def wait_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, migrated database of the given kind; dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'parley.db'}"
        upgrade(Settings(database_url=url))
        yield url
        return
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Stack:
    def __init__(self, *, db_url: str, model: str, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.env = {
            "PARLEY_DATABASE_URL": db_url,
            "PARLEY_REDIS_URL": REDIS_URL,
            "PARLEY_REDIS_PREFIX": f"parley-test-{uuid.uuid4().hex[:10]}",
            "PARLEY_MODEL": model,
            "PARLEY_WORKER_TORCH_THREADS": "1",
            "PARLEY_WORKER_HEARTBEAT_S": "1",
            # Tests poll fast; the rate limiter is off unless a test sets a limit.
            "PARLEY_RATE_LIMIT_PER_MINUTE": "0",
            "PARLEY_MAX_AUDIO_LENGTH_MS": str(RUNNING_MS),
        }
        self.env.update({f"PARLEY_{k.upper()}": str(v) for k, v in settings.items()})
        self.settings = Settings(
            **{k.removeprefix("PARLEY_").lower(): v for k, v in self.env.items()}
        )
        self.redis = self.settings.redis.client()
        self.keys = RedisKeys(self.settings.redis_prefix)
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        self.client.__enter__()
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def start_worker(
        self, *, wait: bool = True, args: tuple[str, ...] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """``parley worker *args`` with the stack's settings and ``env`` on top."""
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        self._logs.append(log)
        full_env = {**os.environ, **self.env, **env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "worker", *args],
            env=full_env,
            stdout=log,
            stderr=log,
        )
        self.workers.append(proc)
        if wait:
            self.wait_workers(len([w for w in self.workers if w.poll() is None]))
        return proc

    def wait_workers(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Up means consuming (what /readyz asks), not just beating.
            if sum(bool(w.get("consuming")) for w in live_workers(self.redis, self.keys)) >= count:
                return
            dead = [w for w in self.workers if w.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited early:\n{self.worker_logs()}")
            time.sleep(0.1)
        raise TimeoutError(f"{count} workers did not come up:\n{self.worker_logs()}")

    def worker_logs(self, tail: int | None = 4000) -> str:
        """The workers' logs: the last ``tail`` characters of each (for failure messages), or
        all of them with ``tail=None`` (for asserting on what was logged)."""
        return "\n".join(
            p.read_text(errors="replace")[-(tail or 0) :] for p in self.tmp.glob("worker-*.log")
        )

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def close(self) -> None:
        self.stop_workers()
        self.client.__exit__(None, None, None)
        # A stack on a Redis that is not there (a test of that) has nothing to clean.
        with contextlib.suppress(RedisConnectionError):
            for key in self.redis.scan_iter(match=f"{self.settings.redis_prefix}:*", count=500):
                self.redis.delete(key)
        self.redis.close()

    # --- API helpers -------------------------------------------------------------------

    def conversation(self, **body: Any) -> str:
        r = self.client.post("/v1/conversations", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def say(self, cid: str, speaker: int, text: str, **params: Any) -> dict[str, Any]:
        params.setdefault("max_audio_length_ms", 800)
        params.setdefault("temperature", 0)
        r = self.client.post(
            f"/v1/conversations/{cid}/turns",
            json={"speaker": speaker, "text": text, "params": params},
        )
        assert r.status_code == 202, r.text
        return dict(r.json())

    def upload(
        self, cid: str, speaker: int, text: str, data: bytes, name: str = "a.wav"
    ) -> dict[str, Any]:
        r = self.client.post(
            f"/v1/conversations/{cid}/turns",
            data={"speaker": str(speaker), "text": text},
            files={"audio": (name, data, "application/octet-stream")},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in FINISHED:
                return dict(job)
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not finish:\n{self.worker_logs()}")

    def codes(self, cid: str, tid: str) -> list[list[int]]:
        r = self.client.get(f"/v1/conversations/{cid}/turns/{tid}/codes")
        assert r.status_code == 200, r.text
        return list(r.json()["codes"])


@contextmanager
def running_stack(
    kind: str, tmp: Path, model: Path | str, *, key: str | None = None, **settings: Any
) -> Iterator[Stack]:
    """A fresh database of ``kind`` and a stack on it with one worker up; all gone afterwards.
    With ``key``, the server is keyed with it alone and the stack's client sends it."""
    if key is not None:
        settings["api_keys"] = key
    with database(kind, tmp) as url:
        stack = Stack(db_url=url, tmp=tmp, model=str(model), **settings)
        if key is not None:
            stack.client.headers["Authorization"] = f"Bearer {key}"
        try:
            stack.start_worker()
            yield stack
        finally:
            stack.close()
