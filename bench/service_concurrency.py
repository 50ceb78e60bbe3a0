"""What users get from one worker: N conversations each posting one turn at once, over HTTP.

For each N, every round makes N fresh conversations (so each turn has the same empty context),
then N client threads post one ``frames``-frame turn each at the same moment (seeded sampling)
and stream it to its end through ``GET …/stream?format=pcm``. Per N:

- aggregate frames/s: audio frames streamed ÷ wall time from the posts to the last byte, and
  its ratio to N = 1 (how much of the frame loop's batching reaches users);
- first audio, p50 and p99 over every turn: from the client's POST to its first streamed byte;
- the worker's CPU per frame made, from ``/proc`` before the posts and after every job has
  succeeded (so storing counts too), split by thread (``bench.thread_cpu``): the frame loop
  (model steps and the batched Mimi decode), the task threads (the step publisher's rounds:
  levels, silence guards and one Redis pipeline a step for every turn, run by one of them in
  turn; FLAC and SQL) and the rest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from bench import summary, thread_cpu
from bench.service_bench import FINISHED, stack

PCM_BYTES_PER_FRAME = 1920 * 2  # 80 ms of 24 kHz 16-bit mono


@dataclass
class _Turn:
    cid: str
    seed: int
    posted_at: float = 0.0
    first_at: float | None = None
    last_at: float = 0.0
    frames: float = 0.0
    job_id: str = ""
    error: str | None = None


@dataclass
class _Size:
    walls_s: list[float] = field(default_factory=list)
    frames: float = 0.0
    firsts_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)


def _speak(base_url: str, turn: _Turn, start: threading.Barrier, frames: int) -> None:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        start.wait()
        turn.posted_at = time.perf_counter()
        body = {
            "speaker": 0,
            "text": "One turn among many at once.",
            "params": {"max_audio_length_ms": frames * 80, "seed": turn.seed},
        }
        r = client.post(f"/v1/conversations/{turn.cid}/turns", json=body)
        if not r.is_success:
            turn.error = f"POST {r.status_code}: {r.text[:200]}"
            return
        turn.job_id = r.json()["job_id"]
        received = 0
        url = f"/v1/conversations/{turn.cid}/turns/{r.json()['id']}/stream?format=pcm"
        with client.stream("GET", url) as response:
            for chunk in response.iter_bytes():
                if chunk and turn.first_at is None:
                    turn.first_at = time.perf_counter()
                received += len(chunk)
        turn.last_at = time.perf_counter()
        turn.frames = received / PCM_BYTES_PER_FRAME


def _wait_succeeded(client: httpx.Client, job_ids: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for job_id in job_ids:
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']}")
            time.sleep(0.05)
        if job["status"] != "succeeded":
            raise RuntimeError(f"turn did not succeed: {job}")


def _round(
    client: httpx.Client, n: int, frames: int, worker_pid: int, seed: int
) -> tuple[list[_Turn], dict[str, float] | None]:
    """One round of ``n`` turns at once: (turns, the worker's CPU split or None)."""
    cids = [client.post("/v1/conversations", json={}).json()["id"] for _ in range(n)]
    turns = [_Turn(cid, seed + i) for i, cid in enumerate(cids)]
    start = threading.Barrier(n + 1)
    base = str(client.base_url)
    threads = [threading.Thread(target=_speak, args=(base, t, start, frames)) for t in turns]
    for t in threads:
        t.start()
    cpu_before = thread_cpu.read(worker_pid)
    busy_before = _engine_busy(client)
    start.wait()
    for t in threads:
        t.join()
    errors = [t.error for t in turns if t.error]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} turns failed: {errors[0]}")
    _wait_succeeded(client, [t.job_id for t in turns])
    cpu_after = thread_cpu.read(worker_pid)
    cpu = thread_cpu.split(cpu_before, cpu_after) if cpu_before and cpu_after else None
    if cpu is not None:
        cpu.update(_split_loop(cpu["frame_loop"], busy_before, _engine_busy(client)))
    return turns, cpu


def _engine_busy(client: httpx.Client) -> dict[str, float]:
    """The worker's ``engine_busy_s`` (its frame-loop thread's wall seconds by kind), from its
    heartbeat in /readyz; beaten whenever a job is taken or let go, so current between rounds."""
    workers = client.get("/readyz").json().get("workers") or [{}]
    return dict(workers[0].get("engine_busy_s") or {})


def _split_loop(
    loop_cpu_s: float, before: dict[str, float], after: dict[str, float]
) -> dict[str, float]:
    """The frame-loop thread's CPU cut by where its wall time went: ``model`` (prefill and
    steps), ``decode`` (batched Mimi decode) and ``loop_other`` (handing frames out)."""
    spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("model", "decode", "loop")}
    # the loop's wall time holds the other two; the max guards against a reading that does not
    whole = max(spent["loop"], spent["model"] + spent["decode"])
    if whole <= 0:
        return {}
    model = loop_cpu_s * spent["model"] / whole
    decode = loop_cpu_s * spent["decode"] / whole
    return {"model": model, "decode": decode, "loop_other": max(0.0, loop_cpu_s - model - decode)}


def concurrent_turns(
    client: httpx.Client, *, worker_pid: int, sizes: list[int], frames: int, rounds: int
) -> dict:
    """Figures per N in ``sizes`` (see the module docstring); one warm-up round at the largest N
    comes first, so every batch size of the frame loop has run before the timed rounds."""
    _round(client, max(sizes), frames, worker_pid, seed=10_000)
    by_size: dict[int, _Size] = {}
    for n in sizes:
        got = by_size.setdefault(n, _Size())
        for r in range(rounds):
            turns, cpu = _round(client, n, frames, worker_pid, seed=1000 * n + 100 * r)
            got.walls_s.append(max(t.last_at for t in turns) - min(t.posted_at for t in turns))
            got.frames += sum(t.frames for t in turns)
            got.firsts_ms += [1000 * (t.first_at - t.posted_at) for t in turns if t.first_at]
            for part, seconds in (cpu or {}).items():
                got.cpu_s[part] = got.cpu_s.get(part, 0.0) + seconds
    out: dict[str, dict] = {}
    for n, got in by_size.items():
        frames_per_s = got.frames / sum(got.walls_s)
        out[str(n)] = {
            "turns": n * rounds,
            "frames": got.frames,
            "frames_per_s": frames_per_s,
            "first_audio_ms": summary.spread(got.firsts_ms),
            "worker_cpu_ms_per_frame": {
                part: 1000 * seconds / got.frames for part, seconds in got.cpu_s.items()
            },
        }
    base = out[str(sizes[0])]["frames_per_s"]
    for row in out.values():
        row["vs_first_size"] = row["frames_per_s"] / base
    return {"frames_per_turn": frames, "rounds": rounds, "sizes": out}


def measure(
    *, sizes: list[int], frames: int, rounds: int, max_batch: int, extra_env: dict | None = None
) -> dict:
    """:func:`concurrent_turns` on a stack of its own: the tiny checkpoint, one worker with
    ``PARLEY_MAX_BATCH=max_batch``."""
    with stack(None, {"PARLEY_MAX_BATCH": str(max_batch), **(extra_env or {})}) as (client, ready):
        pid = int(ready["workers"][0]["pid"])
        out = concurrent_turns(client, worker_pid=pid, sizes=sizes, frames=frames, rounds=rounds)
    return {**out, "max_batch": max_batch}
