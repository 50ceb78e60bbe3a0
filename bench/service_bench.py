"""Service benchmarks over real HTTP against real ``parley api`` and ``parley worker`` processes.

- queue overhead: POST turn → job running, from the client's send time to the worker's
  ``started_at`` (same host, same clock; no polling delay in the figure), p50 and p99; and the
  part after the API created the job row (``created_at`` → ``started_at``);
- time to first audio through the stream endpoint for a turn of N frames, and its fraction of
  the whole turn (last byte);
- polling: GET /v1/jobs/{id} requests per second with several concurrent clients;
- the CSM sidecar endpoint against the same work through the conversation API, side by side.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from bench import summary
from shared.settings import Settings

FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(client: httpx.Client, timeout: float = 180, *, workers: int = 1) -> dict:
    """/readyz's body once the stack is ready with at least ``workers`` live workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = client.get("/readyz")
            if r.status_code == 200 and len(r.json()["workers"]) >= workers:
                return dict(r.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"stack did not become ready with {workers} worker(s)")


@contextmanager
def stack(
    model: str | None,
    extra_env: dict[str, str] | None = None,
    *,
    workers: int = 1,
    database_url: str | None = None,
    log_dir: Path | None = None,
) -> Iterator[Any]:
    """``parley api`` + ``workers`` ``parley worker`` processes on ``database_url`` (default:
    SQLite in a temp folder), the machine's Redis under a prefix of its own (removed
    afterwards). Yields (client, readyz) once every worker is live. With ``log_dir``, each
    process writes its output to a file there (``api.log``, ``worker-N.log``)."""
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.db'}",
        "PARLEY_REDIS_PREFIX": f"parley-bench-{uuid.uuid4().hex[:8]}",
        "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_RATE_LIMIT_PER_MINUTE": "0",  # the polling benchmark asks as fast as it can
        **(extra_env or {}),
    }
    if model is None:
        subprocess.run(
            [sys.executable, "-m", "parley", "tiny-model", str(tmp / "tiny")],
            check=True,
            env=env,
            capture_output=True,
        )
        model = str(tmp / "tiny")
    env["PARLEY_MODEL"] = model
    subprocess.run(
        [sys.executable, "-m", "parley", "migrate"], check=True, env=env, capture_output=True
    )
    commands = [["api", "--port", str(port)]] + [["worker"]] * workers
    names = ["api"] + [f"worker-{i}" for i in range(workers)]
    logs = [open(log_dir / f"{n}.log", "wb") if log_dir else None for n in names]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "parley", *command], env=env, stdout=log, stderr=log
        )
        for command, log in zip(commands, logs, strict=True)
    ]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, _wait_ready(client, workers=workers)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        for log in logs:
            if log is not None:
                log.close()
        redis = Settings().redis.client(socket_timeout=10, socket_connect_timeout=5)
        for key in redis.scan_iter(match=f"{env['PARLEY_REDIS_PREFIX']}:*", count=500):
            redis.delete(key)
        redis.close()


def _post_turn(client: httpx.Client, cid: str, i: int, frames: int) -> dict:
    r = client.post(
        f"/v1/conversations/{cid}/turns",
        json={
            "speaker": i % 2,
            "text": f"Benchmark turn {i}.",
            "params": {"max_audio_length_ms": frames * 80, "seed": i},
        },
    )
    r.raise_for_status()
    return dict(r.json())


def _wait_job(client: httpx.Client, job_id: str) -> dict:
    while True:
        job = dict(client.get(f"/v1/jobs/{job_id}").json())
        if job["status"] in FINISHED:
            if job["status"] != "succeeded":
                raise RuntimeError(f"turn did not succeed: {job}")
            return job
        time.sleep(0.02)


def queue_overhead(client: httpx.Client, *, turns: int, frames: int) -> dict:
    """Client send time → the worker's ``started_at``, for turns posted one after another."""
    cid = client.post("/v1/conversations", json={"max_context_turns": 2}).json()["id"]
    samples, post, transit = [], [], []
    for i in range(turns + 2):  # two warm-up turns
        sent = time.time()
        t0 = time.perf_counter()
        turn = _post_turn(client, cid, i, frames)
        post_ms = 1000 * (time.perf_counter() - t0)
        job = _wait_job(client, turn["job_id"])
        started = datetime.fromisoformat(job["started_at"]).timestamp()
        created = datetime.fromisoformat(job["created_at"]).timestamp()
        if i >= 2:
            samples.append(1000 * (started - sent))
            transit.append(1000 * (started - created))
            post.append(post_ms)
    return {
        "turns": turns,
        "post_ms_p50": statistics.median(post),
        "post_to_running_ms_p50": statistics.median(samples),
        "post_to_running_ms_p99": summary.percentile(samples, 0.99),
        # From the job row's creation in the API's transaction to the worker's start.
        "created_to_running_ms_p50": statistics.median(transit),
        "created_to_running_ms_p99": summary.percentile(transit, 0.99),
        "samples_ms": samples,
        "last_job_id": turn["job_id"],
    }


def first_audio(client: httpx.Client, *, frames: int, repeats: int) -> dict:
    """POST a turn, open its stream at once: first audio bytes vs last byte."""
    cid = client.post("/v1/conversations", json={"max_context_turns": 2}).json()["id"]
    firsts, totals = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        turn = _post_turn(client, cid, i, frames)
        url = f"/v1/conversations/{cid}/turns/{turn['id']}/stream?format=pcm"
        first = None
        received = 0
        with client.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter()
                received += len(chunk)
        total = time.perf_counter() - t0
        if received != frames * 1920 * 2:
            raise RuntimeError(f"streamed {received} bytes, expected {frames * 1920 * 2}")
        _wait_job(client, turn["job_id"])
        if i and first is not None:  # the first turn warms up
            firsts.append(1000 * (first - t0))
            totals.append(1000 * total)
    return summary.first_audio(frames, firsts, totals)


def _clip(seconds: float, seed: int) -> bytes:
    """A WAV of a noisy chirp: the context audio a client would send."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24_000)) / 24_000
    wave = 0.4 * np.sin(2 * np.pi * (200 + 300 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), 24_000, format="WAV")
    return buf.getvalue()


def sidecar(client: httpx.Client, *, frames: int, repeats: int) -> dict:
    """The same work, two ways, side by side: ``POST /v1/csm/generate`` with two 2-s context
    segments, against the conversation API (a conversation, two uploads, the turn, polling,
    its codes, the delete). Seconds from the first request to the codes in hand."""
    clips = [_clip(2.0, 1), _clip(2.0, 2)]
    segments = [
        {"text": "How are you today?", "speaker": 1, "audio": base64.b64encode(clips[0]).decode()},
        {"text": "Fine, and you?", "speaker": 0, "audio": base64.b64encode(clips[1]).decode()},
    ]
    params = {"temperature": 0, "max_audio_length_ms": frames * 80}
    one_call, by_conversation = [], []
    for i in range(repeats + 1):  # the first of each warms up
        t0 = time.perf_counter()
        r = client.post(
            "/v1/csm/generate",
            json={"text": "I am well.", "speaker": 1, "context": segments, **params},
        )
        r.raise_for_status()
        t1 = time.perf_counter()
        cid = client.post("/v1/conversations", json={}).json()["id"]
        for segment, clip in zip(segments, clips, strict=True):
            client.post(
                f"/v1/conversations/{cid}/turns",
                data={"speaker": str(segment["speaker"]), "text": segment["text"]},
                files={"audio": ("c.wav", clip)},
            ).raise_for_status()
        body = {"speaker": 1, "text": "I am well.", "params": params}
        turn = client.post(f"/v1/conversations/{cid}/turns", json=body).json()
        _wait_job(client, turn["job_id"])
        codes = client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/codes").json()["codes"]
        client.delete(f"/v1/conversations/{cid}").raise_for_status()
        t2 = time.perf_counter()
        if codes != r.json()["codes"]:
            raise RuntimeError("the sidecar and the conversation API spoke different codes")
        if i:
            one_call.append(1000 * (t1 - t0))
            by_conversation.append(1000 * (t2 - t1))
    sidecar_ms, conversation_ms = statistics.median(one_call), statistics.median(by_conversation)
    return {
        "frames": frames,
        "sidecar_ms_p50": sidecar_ms,
        "conversation_api_ms_p50": conversation_ms,
        "sidecar_over_conversation": sidecar_ms / conversation_ms,
    }


def polling_rate(base_url: str, job_id: str, *, clients: int, seconds: float) -> dict:
    """GET /v1/jobs/{id} as fast as ``clients`` threads can, for ``seconds``."""
    counts = [0] * clients
    errors = [0] * clients
    stop = time.perf_counter() + seconds

    def poll(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as c:
            while time.perf_counter() < stop:
                if c.get(f"/v1/jobs/{job_id}").status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": sum(counts) / seconds,
        "errors": sum(errors),
    }
