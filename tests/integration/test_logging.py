"""Log lines of real `parley api` and `parley worker` processes: JSON (or text) carrying the
request id of the request, and the job and conversation ids of the job, they were logged for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from tests.servers import free_port
from tests.stack import REDIS_URL, RUNNING_MS, TOO_LONG_TEXT, Stack, database

HEX_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def api_process(tmp: Path, log_format: str) -> Iterator[tuple[str, Path]]:
    """A real `parley api` on a free port (SQLite, Redis under its own prefix); its base URL and
    the file its stderr goes to. Stopped, and its Redis keys removed, afterwards."""
    prefix = f"parley-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    with database("sqlite", tmp) as url:
        env = {
            **os.environ,
            "PARLEY_DATABASE_URL": url,
            "PARLEY_REDIS_URL": REDIS_URL,
            "PARLEY_REDIS_PREFIX": prefix,
            "PARLEY_PORT": str(port),
            "PARLEY_LOG_FORMAT": log_format,
            "PARLEY_RATE_LIMIT_PER_MINUTE": "0",
        }
        stderr = tmp / "api.err"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parley", "api"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(stderr.read_text()) from None
                    time.sleep(0.1)
            yield base, stderr
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            redis = Redis.from_url(REDIS_URL)
            for key in redis.scan_iter(match=f"{prefix}:*"):
                redis.delete(key)
            redis.close()


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON (any line that is not JSON fails the test)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]


def exchange(base: str) -> dict[str, Any]:
    """Requests with a sane, an insane and no X-Request-ID, and a turn (queued: no worker)."""
    ids: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/healthz", headers={"X-Request-ID": "trace-1.a:b_c"})
        assert r.headers["x-request-id"] == "trace-1.a:b_c"
        r = client.get("/healthz", headers={"X-Request-ID": "not sane!" + "x" * 200})
        ids["replaced"] = r.headers["x-request-id"]
        assert HEX_ID.fullmatch(ids["replaced"])
        r = client.get("/healthz")
        assert (
            HEX_ID.fullmatch(r.headers["x-request-id"])
            and r.headers["x-request-id"] != ids["replaced"]
        )
        r = client.post("/v1/conversations", json={})
        ids["cid"] = r.json()["id"]
        ids["turn_request"] = f"turn-{uuid.uuid4().hex}"
        r = client.post(
            f"/v1/conversations/{ids['cid']}/turns",
            json={"speaker": 0, "text": "Logged with its request id."},
            headers={"X-Request-ID": ids["turn_request"]},
        )
        assert r.status_code == 202, r.text
        assert r.headers["x-request-id"] == ids["turn_request"]
        ids["job_id"] = r.json()["job_id"]
        # an error answer carries the id too
        r = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "missing-job"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "missing-job"
    return ids


def test_api_json_logs_carry_the_request_id(tmp_path: Path) -> None:
    with api_process(tmp_path, "json") as (base, stderr):
        ids = exchange(base)
        time.sleep(0.5)  # let the last lines reach the file
    records = json_lines(stderr)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    # the turn's own line, logged in a worker thread of the route: request, job, conversation
    [stored] = [r for r in records if "stored as job" in r["message"]]
    assert stored["request_id"] == ids["turn_request"]
    assert stored["job_id"] == ids["job_id"] and stored["conversation_id"] == ids["cid"]
    # uvicorn's access line of each request carries that request's id
    access = {r["request_id"]: r["message"] for r in records if r["logger"] == "uvicorn.access"}
    assert "/healthz" in access["trace-1.a:b_c"]
    assert "/healthz" in access[ids["replaced"]]
    assert "/turns" in access[ids["turn_request"]] and "202" in access[ids["turn_request"]]
    assert "404" in access["missing-job"]
    # lines outside any request (start-up) carry no request id
    assert any("request_id" not in r for r in records)


def test_api_text_logs_end_with_the_ids(tmp_path: Path) -> None:
    with api_process(tmp_path, "text") as (base, stderr):
        ids = exchange(base)
        time.sleep(0.5)
    lines = stderr.read_text().splitlines()
    [stored] = [line for line in lines if "stored as job" in line]
    assert stored.endswith(
        f"[request_id={ids['turn_request']} job_id={ids['job_id']} conversation_id={ids['cid']}]"
    )
    assert any(line.endswith("[request_id=missing-job]") for line in lines)


def test_worker_json_logs_carry_the_job_id(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=0, log_format="json", max_text_chars=5000)
    # Started here so that stderr (the log) and stdout (Celery's own prints) stay apart.
    with open(stack.tmp / "worker-0.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "worker"],
            env={**os.environ, **stack.env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    stack.workers.append(proc)
    stack.wait_workers(1)
    cid = stack.conversation()
    ok = stack.say(cid, 0, "A turn that is stored.")
    # passes the API's character limit, not the model's 2048 positions: fails with a traceback
    bad = stack.say(cid, 1, TOO_LONG_TEXT, max_audio_length_ms=RUNNING_MS)
    assert stack.wait_job(ok["job_id"])["status"] == "succeeded"
    assert stack.wait_job(bad["job_id"])["status"] == "failed"
    stack.stop_workers()

    records = json_lines(stack.tmp / "worker-0.log")
    [done] = [r for r in records if r["message"].endswith("ms") and "done:" in r["message"]]
    assert done["job_id"] == ok["job_id"] and done["conversation_id"] == cid
    [failed] = [r for r in records if r["message"] == f"job {bad['job_id']} failed"]
    assert failed["job_id"] == bad["job_id"] and failed["level"] == "ERROR"
    assert "prompt_too_long" in failed["exc_info"] or "2048" in failed["exc_info"]
    # lines outside a job (start-up, heartbeats) carry no job id
    assert any("job_id" not in r for r in records)
    assert {r.get("job_id") for r in records} <= {None, ok["job_id"], bad["job_id"]}
