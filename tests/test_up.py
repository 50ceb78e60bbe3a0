"""`parley up`: migrates, starts the bundled Redis when none answers, a worker and the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.redis_server import redis_answers
from tests.processes import free_port


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
                deadline = time.monotonic() + 120
                ready = None
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        r = client.get("/readyz")
                        if r.status_code == 200:
                            ready = r.json()
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                assert ready is not None, log.read_text()
                # No GPU here: the worker was given `auto` and chose the CPU.
                assert [w["device"] for w in ready["workers"]] == ["cpu"]
                assert redis_answers(redis_url)  # the bundled server it started
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
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    assert (tmp_path / "parley.db").exists()
    assert not redis_answers(redis_url)  # stopped with the stack
    assert "starting the bundled redis-server" in log.read_text()
    assert "starting 1 worker(s) on: auto" in log.read_text()
