"""Turn latency through the whole stack on this machine.

Starts ``parley api`` and ``parley worker`` as real processes (SQLite in a temp folder, the
machine's Redis under a key prefix of its own, the tiny test checkpoint unless PARLEY_MODEL
names another), then over HTTP measures, per turn of N frames:
  - POST → job running (queue overhead), POST → job succeeded (turn latency);
  - turn latency per frame, and the real-time factor (latency / audio duration).
Prints a table and writes bench/results/latest.json. Medians, never one sample.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from redis import Redis

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.005  # a client polling every 5 ms: fine-grained, without starving the worker's CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(client: httpx.Client, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                return dict(r.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("stack did not become ready")


def measure(client: httpx.Client, *, turns: int, frames: int) -> dict[str, list[float]]:
    cid = client.post("/v1/conversations", json={"max_context_turns": 4}).json()["id"]
    to_running, to_done, post = [], [], []
    for i in range(turns):
        t0 = time.perf_counter()
        turn = client.post(
            f"/v1/conversations/{cid}/turns",
            json={
                "speaker": i % 2,
                "text": f"Benchmark turn {i}.",
                "params": {"max_audio_length_ms": frames * 80, "temperature": 0.9, "seed": i},
            },
        ).json()
        post.append(1000 * (time.perf_counter() - t0))
        running_at = None
        while True:
            job = client.get(f"/v1/jobs/{turn['job_id']}").json()
            now = time.perf_counter()
            if running_at is None and job["status"] != "queued":
                running_at = now
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(POLL_S)
        if job["status"] != "succeeded":
            raise RuntimeError(f"turn failed: {job}")
        to_running.append(1000 * ((running_at or now) - t0))
        to_done.append(1000 * (now - t0))
    return {"post_ms": post, "post_to_running_ms": to_running, "post_to_done_ms": to_done}


def _drop_keys(prefix: str) -> None:
    """Leave the shared Redis as we found it."""
    redis = Redis.from_url(Settings().redis_url)
    for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        redis.delete(key)
    redis.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "PARLEY_REDIS_PREFIX": f"parley-bench-{uuid.uuid4().hex[:8]}",
        "PARLEY_LOG_LEVEL": "WARNING",
    }
    if "PARLEY_MODEL" not in os.environ:
        subprocess.run(
            [sys.executable, "-m", "parley", "tiny-model", str(tmp / "tiny")],
            check=True,
            env=env,
            capture_output=True,
        )
        env["PARLEY_MODEL"] = str(tmp / "tiny")
    subprocess.run(
        [sys.executable, "-m", "parley", "migrate"], check=True, env=env, capture_output=True
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "parley", "api", "--port", str(port)], env=env),
        subprocess.Popen([sys.executable, "-m", "parley", "worker"], env=env),
    ]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            ready = wait_ready(client)
            measure(client, turns=2, frames=args.frames)  # warm-up
            samples = measure(client, turns=args.turns, frames=args.frames)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        _drop_keys(env["PARLEY_REDIS_PREFIX"])
    audio_ms = args.frames * 80
    done = statistics.median(samples["post_to_done_ms"])
    result = {
        "model": ready.get("model"),
        "test_model": ready.get("test_model"),
        "turns": args.turns,
        "frames_per_turn": args.frames,
        "median_post_ms": statistics.median(samples["post_ms"]),
        "median_post_to_running_ms": statistics.median(samples["post_to_running_ms"]),
        "median_post_to_done_ms": done,
        "median_ms_per_frame": done / args.frames,
        "median_real_time_factor": done / audio_ms,
        "samples": samples,
    }
    print(f"model: {result['model']}")
    print(f"{'metric':<34}{'median':>12}")
    for key in (
        "median_post_ms",
        "median_post_to_running_ms",
        "median_post_to_done_ms",
        "median_ms_per_frame",
        "median_real_time_factor",
    ):
        print(f"{key:<34}{result[key]:>12.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
