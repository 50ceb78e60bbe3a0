"""`parley up`: migrates, starts the bundled Redis when none answers, a worker and the API, and
starts again any of them that exits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.redis_io.server import redis_answers
from tests.servers import free_port


def role(proc: psutil.Process) -> str:
    """Which child of `parley up` this is: redis, worker or api."""
    cmd = proc.cmdline()
    return "redis" if "redis-server" in cmd[0] else cmd[cmd.index("parley") + 1]


def wait_ready(
    client: httpx.Client, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready:\n{log.read_text()[-4000:]}")


def speak_a_turn(client: httpx.Client) -> None:
    cid = client.post("/v1/conversations", json={}).json()["id"]
    turn = client.post(
        f"/v1/conversations/{cid}/turns",
        json={"speaker": 0, "text": "Hello.", "params": {"max_audio_length_ms": 400}},
    ).json()
    while (job := client.get(f"/v1/jobs/{turn['job_id']}").json())["status"] in (
        "queued",
        "running",
    ):
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    wav = client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/audio")
    assert wav.status_code == 200 and wav.content[:4] == b"RIFF"


def test_parley_up_serves_a_turn_with_its_own_redis(tmp_path: Path, tiny_model_dir: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    api_port = free_port()
    assert not redis_answers(redis_url)
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
        "PARLEY_REDIS_URL": redis_url,
        "PARLEY_MODEL": str(tiny_model_dir),
        "PARLEY_WORKER_TORCH_THREADS": "1",
    }
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "up", "--port", str(api_port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
                ready = wait_ready(client, proc, log, timeout=120)
                assert ready is not None, log.read_text()
                # No GPU here: the worker was given `auto` and chose the CPU.
                assert [w["device"] for w in ready["workers"]] == ["cpu"]
                assert redis_answers(redis_url)  # the bundled server it started
                speak_a_turn(client)
                # Every child is supervised: killed, each is started again, and serves.
                children = {role(c): c for c in psutil.Process(proc.pid).children()}
                assert set(children) == {"redis", "worker", "api"}, children
                for child in children.values():
                    child.kill()
                wait_ready(client, proc, log, timeout=120)
                speak_a_turn(client)
                restarted = {role(c): c.pid for c in psutil.Process(proc.pid).children()}
                assert all(restarted[r] != children[r].pid for r in children), restarted
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert (tmp_path / "parley.db").exists()
    assert not redis_answers(redis_url)  # stopped with the stack
    assert "starting the bundled redis-server" in log.read_text()
    text = log.read_text()
    assert "starting 1 worker(s) on: auto" in text
    for name in ("redis", "worker-0", "api"):
        assert f"{name} (pid {children[name.split('-')[0]].pid}) exited with code -9" in text
        assert f"{name} restarted (pid " in text


def test_parley_up_stops_when_its_worker_cannot_load_the_model(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
        "PARLEY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PARLEY_MODEL": str(tmp_path / "no-such-checkpoint"),
        "PARLEY_WORKER_TORCH_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "parley", "up", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "worker cannot start" in out.stderr  # the worker's own reason
    assert "worker-0 (pid" in out.stderr and "cannot start as configured" in out.stderr
    assert "restarted" not in out.stderr
