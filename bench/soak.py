"""``make soak``: load under chaos, then every turn read back from SQL.

Starts a stack of its own on the tiny random test checkpoint (never csm-1b: its audio is noise,
so these are figures of the pipeline's recovery, not of the model): a bundled Redis on a free
port with append-only persistence, a fresh SQLite file (or a fresh PostgreSQL database with
``--db postgresql``, dropped afterwards) and ``parley up --workers N``. For ``--minutes``,
``--conversations`` clients each post short turns one after another, waiting for each to
finish; a post whose response never came (the API was down, the connection broke) is
*unacknowledged* and counted apart. Meanwhile a chaos loop with a seeded RNG injects one fault
every ``--fault-every`` seconds, picked at random (or round-robin with ``--round-robin``):

- ``worker-kill``: SIGKILL a worker process (a child of ``parley up``);
- ``worker-freeze``: SIGSTOP a worker for longer than its heartbeat lives, then SIGCONT;
- ``redis-kill-empty`` / ``redis-kill-data``: SIGKILL Redis and start it again on the same
  port, with its append-only file deleted first (empty) or loaded (data kept); a random pick
  of ``redis-kill`` alternates the two;
- ``api-kill``: SIGKILL the process serving the API (``parley up`` restarts it; where the API
  runs inside ``parley up`` itself, that is the process killed, and nothing restarts it).

The soak restarts only Redis; everything else is the service's own recovery. After the load
(faults stop ``--quiet`` seconds before its end), a drain waits until no stored turn is queued
or running (at most ``--drain`` seconds). Then every turn is read back from SQL and each post
is matched to its rows by a tag in its text: accepted (202), completed (succeeded, with its
audio and codes stored once: codes of exactly ``frames × n_q`` entries), failed, lost (accepted
but missing, or still queued or running after the drain), duplicated (a post with more than one
turn row), unacknowledged (and how many of those were stored anyway). Per fault kind: the time
to recover, from the fault to the later of (a) the first turn posted after it succeeding and
(b) every turn in flight at it (accepted before it, unfinished) finishing; median and worst.

A fault whose target is already down (a worker or the API being restarted) is skipped and
counted apart. Prints a table and writes ``bench/results/soak-latest.json``; exits 1 when a
turn was lost, duplicated or stored damaged, a fault was never recovered from, ``parley up``
died, or the stack was not ready with every worker at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select

from bench.load import scratch_database
from bench.service_bench import free_port
from bench.summary import print_and_save
from shared.db.engine import make_engine
from shared.db.models import Job, Turn, TurnMedia
from shared.jobs.queue import broker_keyprefix, broker_queue_key
from shared.redis_io.server import redis_answers, start_redis
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_MODEL_NOTE = (
    "tiny random test checkpoint standing in for csm-1b (whose weights cannot be had here); "
    "its audio is noise, so these are figures of the pipeline's recovery, not csm-1b's"
)
KINDS = ("worker-kill", "worker-freeze", "redis-kill-empty", "redis-kill-data", "api-kill")
# A random pick: Redis kills alternate between empty and with data.
RANDOM_KINDS = ("worker-kill", "worker-freeze", "redis-kill", "api-kill")
FINISHED = ("succeeded", "failed", "cancelled")
TAG = re.compile(r"\[soak (c\d+-t\d+)\]")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 2.0
    fault_every_s: float = 8.0
    seed: int = 0
    round_robin: bool = False
    kinds: tuple[str, ...] = KINDS  # the kinds to draw from
    workers: int = 2
    conversations: int = 4
    frames: int = 8  # per turn (80 ms each)
    heartbeat_s: float = 1.0
    broker_timeout_s: float = 5.0
    freeze_s: float = 0.0  # 0: 6 heartbeats (3 for the heartbeat to expire, 2 passes, a margin)
    redis_down_s: float = 1.0  # how long Redis stays down after it is killed
    quiet_s: float = 15.0  # no faults in the load's last seconds
    drain_s: float = 120.0
    request_timeout_s: float = 10.0
    turn_wait_s: float = 60.0  # a client waits this long for its turn, then posts the next
    poll_s: float = 0.2  # between a client's polls of its job
    db: str = "sqlite"
    model: str | None = None  # a checkpoint; None builds the tiny one

    @property
    def freeze_for_s(self) -> float:
        return self.freeze_s or 6 * self.heartbeat_s


@dataclass
class Post:
    """One POST of a turn and what the client saw of it."""

    tag: str
    conversation_id: str
    sent: float  # wall time
    outcome: str = "pending"  # accepted | rejected | unacknowledged
    status_code: int | None = None
    turn_id: str | None = None
    job_id: str | None = None


@dataclass
class Fault:
    kind: str
    at: float  # wall time
    target: str = ""
    injected: bool = True
    note: str = ""


def _wall(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _role(proc: psutil.Process) -> str | None:
    """``api``, ``worker`` or ``up`` for a ``python -m parley …`` process."""
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "parley" not in argv:
        return None
    rest = argv[argv.index("parley") + 1 :]
    return rest[0] if rest and rest[0] in ("api", "worker", "up") else None


class SoakStack:
    """Redis (ours, persistent), SQL and ``parley up`` on the tiny checkpoint; the faults."""

    def __init__(self, config: SoakConfig, tmp: Path, database_url: str | None) -> None:
        self.config = config
        self.tmp = tmp
        self.redis_dir = tmp / "redis"
        self.redis_port = free_port()
        self.api_port = free_port()
        self.key = secrets.token_urlsafe(24)
        self.env = {
            "PARLEY_DATABASE_URL": database_url or f"sqlite:///{tmp / 'soak.db'}",
            "PARLEY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PARLEY_REDIS_PREFIX": "parley-soak",
            "PARLEY_API_KEYS": self.key,
            "PARLEY_WORKER_HEARTBEAT_S": str(config.heartbeat_s),
            "PARLEY_WORKER_BROKER_TIMEOUT_S": str(config.broker_timeout_s),
            "PARLEY_RATE_LIMIT_PER_MINUTE": "0",
            "PARLEY_WORKER_TORCH_THREADS": "1",
            "PARLEY_DEVICE": "cpu",
        }
        self.redis: subprocess.Popen[bytes] | None = None
        self.up: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}  # every process of the stack, for the end
        self.stopped: set[int] = set()  # pids under SIGSTOP
        self.rng = random.Random(config.seed)
        self.api_child = False
        self._redis_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> dict[str, Any]:
        env = {**os.environ, **self.env}
        model = self.config.model
        if model is None:
            model = str(self.tmp / "tiny")
            subprocess.run(
                [sys.executable, "-m", "parley", "tiny-model", model],
                check=True,
                env=env,
                capture_output=True,
            )
        self.env["PARLEY_MODEL"] = env["PARLEY_MODEL"] = model
        self.redis = start_redis(self.redis_port, workdir=self.redis_dir, persist=True)
        self.log = open(self.tmp / "up.log", "wb")  # noqa: SIM115
        self.up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parley",
                "up",
                "--workers",
                str(self.config.workers),
                "--port",
                str(self.api_port),
            ],
            cwd=self.tmp,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.seen[self.up.pid] = psutil.Process(self.up.pid)
        ready = self.wait_ready(timeout=300)
        # Whether `parley up` runs the API as a child of its own, or serves it in its process.
        self.api_child = any(_role(p) == "api" for p in self._children())
        return ready

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """/readyz's body once it is 200 with every worker live; {} on timeout."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=5, headers=headers) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = client.get("/readyz")
                    if r.status_code == 200 and len(r.json()["workers"]) >= self.config.workers:
                        return dict(r.json())
                time.sleep(0.25)
        return {}

    # Processes.

    def _children(self) -> list[psutil.Process]:
        if self.up is None:
            return []
        try:
            children = psutil.Process(self.up.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def workers(self) -> list[psutil.Process]:
        return [p for p in self._children() if _role(p) == "worker" and p.pid not in self.stopped]

    def api(self) -> tuple[psutil.Process | None, str]:
        """The process serving the API: the child ``parley api`` (None while it is being
        restarted), or ``parley up`` itself where the API runs inside it."""
        if self.api_child:
            for child in self._children():
                if _role(child) == "api":
                    return child, "parley api"
            return None, ""
        if self.up is not None and self.up.poll() is None:
            return psutil.Process(self.up.pid), "parley up (the API runs inside it)"
        return None, ""

    # Faults.

    def inject(self, kind: str) -> Fault:
        fault = Fault(kind=kind, at=time.time())
        if kind in ("worker-kill", "worker-freeze"):
            workers = self.workers()
            if not workers:
                fault.injected, fault.note = False, self._why_none("no worker running")
                return fault
            target = self.rng.choice(sorted(workers, key=lambda p: p.pid))
            fault.target = f"worker pid {target.pid}"
            fault.at = time.time()
            if kind == "worker-kill":
                _signal(target, signal.SIGKILL)
            else:
                self._freeze(target, fault)
        elif kind.startswith("redis-kill"):
            self._restart_redis(fault, empty=kind == "redis-kill-empty")
        elif kind == "api-kill":
            proc, what = self.api()
            if proc is None:
                fault.injected, fault.note = False, self._why_none("no API process running")
                return fault
            fault.target = f"{what} pid {proc.pid}"
            fault.at = time.time()
            _signal(proc, signal.SIGKILL)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return fault

    def _why_none(self, what: str) -> str:
        if self.up_alive():
            return f"{what} (being restarted): skipped"
        return f"{what}: `parley up` is gone"

    def _freeze(self, target: psutil.Process, fault: Fault) -> None:
        self.stopped.add(target.pid)
        try:
            _signal(target, signal.SIGSTOP)
            time.sleep(self.config.freeze_for_s)
        finally:
            _signal(target, signal.SIGCONT)
            self.stopped.discard(target.pid)
        fault.note = f"stopped {self.config.freeze_for_s:g} s"

    def _restart_redis(self, fault: Fault, *, empty: bool) -> None:
        with self._redis_lock:
            assert self.redis is not None
            fault.target = f"redis pid {self.redis.pid}"
            fault.at = time.time()
            self.redis.kill()
            self.redis.wait()
            time.sleep(self.config.redis_down_s)
            if empty:
                for path in self.redis_dir.iterdir():
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            self.redis = start_redis(self.redis_port, workdir=self.redis_dir, persist=True)
            fault.note = f"down {self.config.redis_down_s:g} s, " + (
                "restarted empty" if empty else "restarted with its data"
            )

    def ensure_whole(self) -> None:
        """Every stopped worker continued and Redis running (the soak's own part)."""
        for proc in self._children():
            with contextlib.suppress(psutil.Error):
                if proc.status() == psutil.STATUS_STOPPED:
                    proc.send_signal(signal.SIGCONT)
        with self._redis_lock:
            if self.redis is not None and (
                self.redis.poll() is not None or not redis_answers(self.env["PARLEY_REDIS_URL"])
            ):
                self.redis.kill()
                self.redis.wait()
                self.redis = start_redis(self.redis_port, workdir=self.redis_dir, persist=True)

    def up_alive(self) -> bool:
        return self.up is not None and self.up.poll() is None

    def stop(self) -> None:
        self._children()
        if self.up is not None and self.up.poll() is None:
            self.up.terminate()
            try:
                self.up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
        # What `parley up` left behind (its own death orphans its children): ours, by pid.
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
        with contextlib.suppress(AttributeError):
            self.log.close()


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


class Chaos(threading.Thread):
    """One fault every ``fault_every_s`` until ``until`` (wall time)."""

    def __init__(self, stack: SoakStack, until: float) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.stack = stack
        self.until = until
        self.faults: list[Fault] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def kinds(self) -> Iterator[str]:
        config = self.stack.config
        rng = random.Random(config.seed + 1)
        redis_empty = True
        n = 0
        while True:
            if config.round_robin:
                kind = config.kinds[n % len(config.kinds)]
            else:
                pool = [k for k in RANDOM_KINDS if any(c.startswith(k) for c in config.kinds)]
                kind = rng.choice(pool)
                if kind == "redis-kill":
                    kind = "redis-kill-empty" if redis_empty else "redis-kill-data"
                    redis_empty = not redis_empty
            n += 1
            yield kind

    def run(self) -> None:
        every = self.stack.config.fault_every_s
        next_at = time.time() + every
        try:
            for kind in self.kinds():
                if self.halt.wait(max(0.0, next_at - time.time())) or next_at > self.until:
                    return
                self.faults.append(self.stack.inject(kind))
                next_at += every
                next_at = max(next_at, time.time() + 1)  # a long fault pushes the next on
        except BaseException as exc:  # reported by the main thread
            self.error = exc


async def _client_loop(
    http: httpx.AsyncClient,
    index: int,
    posts: list[Post],
    config: SoakConfig,
    stop_posting: asyncio.Event,
    give_up: float,
) -> None:
    """One conversation: post a turn, wait for it to finish, again, until told to stop."""
    cid = None
    while cid is None and not stop_posting.is_set():
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = await http.post("/v1/conversations", json={})
            if r.status_code == 201:
                cid = str(r.json()["id"])
                break
        await asyncio.sleep(0.5)
    n = 0
    while cid is not None and not stop_posting.is_set():
        tag = f"c{index}-t{n}"
        post = Post(tag=tag, conversation_id=cid, sent=time.time())
        posts.append(post)
        body = {
            "speaker": n % 2,
            "text": f"Soak turn [soak {tag}].",
            "params": {"max_audio_length_ms": config.frames * 80, "seed": index * 100_000 + n},
        }
        n += 1
        try:
            r = await http.post(f"/v1/conversations/{cid}/turns", json=body)
        except httpx.TransportError:
            post.outcome = "unacknowledged"
            await asyncio.sleep(0.5)
            continue
        post.status_code = r.status_code
        if r.status_code != 202:
            post.outcome = "rejected"
            await asyncio.sleep(0.5)
            continue
        post.outcome = "accepted"
        turn = r.json()
        post.turn_id, post.job_id = str(turn["id"]), str(turn["job_id"])
        # Wait for it (whatever happens to the API meanwhile); the read-back decides.
        wait_until = min(give_up, time.time() + config.turn_wait_s)
        while time.time() < wait_until:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                r = await http.get(f"/v1/jobs/{post.job_id}")
                if r.status_code == 200 and r.json()["status"] in FINISHED:
                    break
            await asyncio.sleep(config.poll_s)


async def _load(stack: SoakStack, posts: list[Post], load_s: float, give_up: float) -> None:
    config = stack.config
    stop_posting = asyncio.Event()
    headers = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(
        base_url=stack.url, headers=headers, timeout=config.request_timeout_s
    ) as http:
        tasks = [
            asyncio.create_task(_client_loop(http, i, posts, config, stop_posting, give_up))
            for i in range(config.conversations)
        ]
        await asyncio.sleep(load_s)
        stop_posting.set()
        await asyncio.gather(*tasks)


@dataclass
class Row:
    turn_id: str
    tag: str | None
    status: str
    frames: int | None
    attempts: int
    finished: float | None
    audio_bytes: int | None
    codes_bytes: int | None
    n_q: int | None
    dispatched: bool = False  # its job sent to the broker (SQL's view)

    @property
    def damaged(self) -> bool:
        """A succeeded turn whose audio is missing or whose codes are not one attempt's."""
        if self.status != "succeeded":
            return False
        return (
            not self.audio_bytes
            or not self.frames
            or not self.n_q
            or self.codes_bytes != self.frames * self.n_q * 2
        )


def read_rows(database_url: str) -> list[Row]:
    engine = make_engine(Settings(database_url=database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    Turn.id,
                    Turn.text,
                    Turn.status,
                    Turn.frames,
                    Job.attempts,
                    Job.finished_at,
                    func.length(TurnMedia.audio_flac),
                    func.length(TurnMedia.codes),
                    TurnMedia.n_q,
                    Job.dispatched,
                )
                .join(Job, Job.turn_id == Turn.id)
                .outerjoin(TurnMedia, TurnMedia.turn_id == Turn.id)
            ).all()
    finally:
        engine.dispose()
    out = []
    for tid, text, status, frames, attempts, finished, audio, codes, n_q, sent in rows:
        match = TAG.search(text or "")
        out.append(
            Row(
                str(tid),
                match.group(1) if match else None,
                str(status),
                frames,
                int(attempts or 0),
                _wall(finished),
                audio,
                codes,
                n_q,
                bool(sent),
            )
        )
    return out


def unfinished_jobs(posts: list[Post], rows: list[Row]) -> dict[str, bool]:
    """The job ids of accepted posts whose turn is still queued or running, each with whether
    SQL says it was sent to the broker (one that was not waits behind its conversation's
    head job, by design)."""
    unfinished = {r.turn_id: r.dispatched for r in rows if r.status not in FINISHED}
    return {p.job_id: unfinished[p.turn_id] for p in posts if p.job_id and p.turn_id in unfinished}


def _message_text(raw: bytes) -> str:
    """A kombu Redis message (or an unacked entry: [message, exchange, routing key]) as
    text with its body decoded, to look for a job id in."""
    try:
        value = json.loads(raw)
        message = value[0] if isinstance(value, list) else value
        body = message.get("body", "")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode(errors="replace")
        return f"{raw.decode(errors='replace')} {body}"
    except (ValueError, AttributeError, TypeError, IndexError):
        return raw.decode(errors="replace")


def broker_whereabouts(env: dict[str, str], jobs: dict[str, bool]) -> dict[str, str]:
    """For each job (id → sent to the broker): ``queue`` (waiting in the broker's queue),
    ``unacked`` (taken by a worker, not acknowledged: back only after the visibility timeout),
    ``nowhere``, or ``not sent`` (SQL has not sent it: it waits behind another job)."""
    job_ids = [j for j, sent in jobs.items() if sent]
    if not jobs:
        return {}
    settings = Settings(redis_prefix=env["PARLEY_REDIS_PREFIX"])
    prefix = broker_keyprefix(settings)
    found = {j: "nowhere" if sent else "not sent" for j, sent in jobs.items()}
    redis = Redis.from_url(env["PARLEY_REDIS_URL"], socket_timeout=10)
    try:
        queued = redis.lrange(broker_queue_key(settings), 0, -1)
        unacked = list(redis.hgetall(prefix + "unacked").values())
    except (OSError, RedisError) as exc:  # say so rather than fail the read-back
        return found | dict.fromkeys(job_ids, f"unknown ({type(exc).__name__})")
    finally:
        redis.close()
    for where, raws in (("unacked", unacked), ("queue", queued)):
        texts = [_message_text(r) for r in raws]
        for job_id in job_ids:
            if any(job_id in t for t in texts):
                found[job_id] = where
    return found


def drain(database_url: str, timeout: float) -> float:
    """Wait until no stored turn is queued or running; the seconds it took (or ``timeout``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if all(r.status in FINISHED for r in read_rows(database_url)):
            break
        time.sleep(1.0)
    return time.monotonic() - began


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "worst": None}
    return {"median": statistics.median(values), "worst": max(values)}


def analyse(posts: list[Post], rows: list[Row], faults: list[Fault]) -> dict[str, Any]:
    """Each post matched to its turn rows by tag; then the recovery of each fault."""
    by_tag: dict[str, list[Row]] = {}
    untagged = 0
    for row in rows:
        if row.tag is None:
            untagged += 1
        else:
            by_tag.setdefault(row.tag, []).append(row)
    turns: dict[str, int] = dict.fromkeys(
        (
            "posted",
            "accepted",
            "completed",
            "failed",
            "lost",
            "duplicated",
            "damaged",
            "rejected",
            "rejected_but_stored",
            "unacknowledged",
            "unacknowledged_stored",
            "unacknowledged_completed",
            "unacknowledged_unfinished",
            "rerun",
        ),
        0,
    )
    turns["posted"] = len(posts)
    turns["untagged_rows"] = untagged
    lost: list[str] = []
    finished_at: dict[str, float | None] = {}  # tag → when its turn finished (accepted posts)
    succeeded: dict[str, bool] = {}
    for post in posts:
        mine = by_tag.get(post.tag, [])
        turns["duplicated"] += max(0, len(mine) - 1)
        turns["damaged"] += sum(r.damaged for r in mine)
        turns["rerun"] += sum(r.attempts > 1 for r in mine)
        if post.outcome == "accepted":
            turns["accepted"] += 1
            own = next((r for r in mine if r.turn_id == post.turn_id), None)
            if own is None or own.status not in FINISHED:
                turns["lost"] += 1
                lost.append(post.tag)
                finished_at[post.tag] = None
                continue
            finished_at[post.tag] = own.finished
            succeeded[post.tag] = own.status == "succeeded"
            if own.status == "succeeded":
                turns["completed"] += 1
            else:
                turns["failed"] += 1
        elif post.outcome == "rejected":
            turns["rejected"] += 1
            turns["rejected_but_stored"] += bool(mine)
        else:  # unacknowledged (or still pending when the load ended: never answered)
            turns["unacknowledged"] += 1
            turns["unacknowledged_stored"] += bool(mine)
            turns["unacknowledged_completed"] += any(r.status == "succeeded" for r in mine)
            turns["unacknowledged_unfinished"] += any(r.status not in FINISHED for r in mine)
    recoveries = []
    for fault in faults:
        recoveries.append(_recovery(fault, posts, finished_at, succeeded))
    kinds: dict[str, dict[str, Any]] = {}
    for fault, rec in zip(faults, recoveries, strict=True):
        k = kinds.setdefault(
            fault.kind,
            {"count": 0, "injected": 0, "recovered": 0, "_s": [], "_new": [], "_inflight": []},
        )
        k["count"] += 1
        k["injected"] += fault.injected
        if fault.injected and rec["recovered"]:
            k["recovered"] += 1
            k["_s"].append(rec["recover_s"])
            k["_new"].append(rec["new_turn_s"])
            if rec["in_flight"]:
                k["_inflight"].append(rec["in_flight_s"])
    for k in kinds.values():
        k["recover_s"] = _spread(k.pop("_s"))
        k["new_turn_s"] = _spread(k.pop("_new"))
        k["in_flight_s"] = _spread(k.pop("_inflight"))
    return {
        "turns": turns,
        "lost_tags": lost[:50],
        "faults": [{**asdict(f), **r} for f, r in zip(faults, recoveries, strict=True)],
        "by_kind": {kind: kinds[kind] for kind in KINDS if kind in kinds},
    }


def _recovery(
    fault: Fault,
    posts: list[Post],
    finished_at: dict[str, float | None],
    succeeded: dict[str, bool],
) -> dict[str, Any]:
    t = fault.at
    news = [
        finished_at[p.tag]
        for p in posts
        if p.outcome == "accepted" and p.sent >= t and succeeded.get(p.tag)
    ]
    new_turn = min((f for f in news if f is not None), default=None)
    in_flight = [
        p.tag
        for p in posts
        if p.outcome == "accepted"
        and p.sent < t
        and (finished_at[p.tag] is None or (finished_at[p.tag] or 0) > t)
    ]
    ends = [finished_at[tag] for tag in in_flight]
    stranded = any(e is None for e in ends)
    in_flight_s = None if stranded or not ends else max(e for e in ends if e is not None) - t
    new_turn_s = None if new_turn is None else new_turn - t
    recovered = fault.injected and new_turn_s is not None and not stranded
    recover_s = max(new_turn_s or 0.0, in_flight_s or 0.0) if recovered else None
    return {
        "recovered": recovered,
        "recover_s": recover_s,
        "new_turn_s": new_turn_s,
        "in_flight": len(in_flight),
        "in_flight_s": in_flight_s,
    }


def soak(config: SoakConfig) -> dict[str, Any]:
    """One soak run: the result as a JSON-ready dict."""
    tmp = Path(tempfile.mkdtemp(prefix="parley-soak-"))
    machine = {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_before": list(os.getloadavg()),
    }
    posts: list[Post] = []
    with scratch_database(config.db, tmp) as url:
        stack = SoakStack(config, tmp, url)
        database_url = stack.env["PARLEY_DATABASE_URL"]
        try:
            ready = stack.start()
            if not ready:
                raise RuntimeError(f"the stack did not become ready; see {tmp / 'up.log'}")
            load_s = config.minutes * 60
            began = time.time()
            chaos = Chaos(stack, until=began + max(0.0, load_s - config.quiet_s))
            chaos.start()
            give_up = began + load_s + config.drain_s
            asyncio.run(_load(stack, posts, load_s, give_up))
            chaos.halt.set()
            chaos.join()
            if chaos.error is not None:
                raise chaos.error
            stack.ensure_whole()
            drained_s = drain(database_url, max(0.0, give_up - time.time()))
            ready_after = stack.wait_ready(timeout=60)
            up_alive = stack.up_alive()
            rows = read_rows(database_url)
            where = broker_whereabouts(stack.env, unfinished_jobs(posts, rows))
        finally:
            stack.stop()
    result = analyse(posts, rows, chaos.faults)
    return {
        "model": TEST_MODEL_NOTE if ready.get("test_model") else ready.get("model"),
        "machine": machine,
        "config": asdict(config),
        "database": config.db,
        "load_s": load_s,
        "drain_s": drained_s,
        "stack_settings": {k: v for k, v in stack.env.items() if k != "PARLEY_API_KEYS"},
        "ready_at_end": bool(ready_after),
        "parley_up_alive_at_end": up_alive,
        "logs": str(tmp),
        # Where the broker has the message of each job still unfinished after the drain.
        "unfinished_in_broker": where,
        **result,
    }


def failures(result: dict[str, Any]) -> list[str]:
    """What makes the soak fail: empty when it passed."""
    t = result["turns"]
    out = []
    for name in ("lost", "duplicated", "damaged"):
        if t[name]:
            out.append(f"{t[name]} {name}")
    unrecovered = {
        kind: k["injected"] - k["recovered"]
        for kind, k in result["by_kind"].items()
        if k["recovered"] < k["injected"]
    }
    if unrecovered:
        out.append(f"faults not recovered from: {unrecovered}")
    if not result["parley_up_alive_at_end"]:
        out.append("`parley up` exited")
    if not result["ready_at_end"]:
        out.append("the stack was not ready (every worker live) at the end")
    return out


def _whereabouts(where: dict[str, str]) -> str:
    places = ("queue", "unacked", "nowhere", "not sent")
    counts = {k: list(where.values()).count(k) for k in places}
    other = len(where) - sum(counts.values())
    return " / ".join(str(n) for n in counts.values()) + (f" ({other} unknown)" if other else "")


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    t = result["turns"]
    c = result["config"]
    rows = [
        ("model", result["model"] or "-"),
        (
            "machine",
            f"{result['machine']['cores']} cores, database {result['database']}, "
            f"{c['workers']} workers, {c['conversations']} conversations × {c['frames']} frames",
        ),
        ("load / drain (s)", f"{result['load_s']:.0f} / {result['drain_s']:.1f}"),
        ("turns posted", str(t["posted"])),
        ("accepted", str(t["accepted"])),
        ("completed (succeeded)", str(t["completed"])),
        ("failed", str(t["failed"])),
        ("LOST", str(t["lost"])),
        (
            "  their jobs' messages: in the queue / unacked / nowhere / not sent",
            _whereabouts(result.get("unfinished_in_broker", {})),
        ),
        ("DUPLICATED", str(t["duplicated"])),
        ("damaged (succeeded, media not one attempt's)", str(t["damaged"])),
        ("re-run (attempts > 1)", str(t["rerun"])),
        (
            "rejected (a response other than 202)",
            f"{t['rejected']} (stored anyway: {t['rejected_but_stored']})",
        ),
        (
            "unacknowledged (no response)",
            f"{t['unacknowledged']} (stored: {t['unacknowledged_stored']}, of which "
            f"succeeded {t['unacknowledged_completed']}, unfinished "
            f"{t['unacknowledged_unfinished']})",
        ),
        (
            "ready at the end / parley up alive",
            f"{result['ready_at_end']} / {result['parley_up_alive_at_end']}",
        ),
    ]
    rows.append(
        (
            "fault: recovered / injected; recover s median / worst (first new turn ok)",
            "",
        )
    )
    for kind, k in result["by_kind"].items():
        rec, new = k["recover_s"], k["new_turn_s"]
        rows.append(
            (
                f"  {kind}",
                f"{k['recovered']} / {k['injected']}"
                + (f" (of {k['count']} tried)" if k["count"] != k["injected"] else "")
                + f"; {_s(rec['median'])} / {_s(rec['worst'])}"
                + f" ({_s(new['median'])} / {_s(new['worst'])})",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = SoakConfig()
    parser.add_argument("--minutes", type=float, default=d.minutes, help="load time")
    parser.add_argument("--fault-every", type=float, default=d.fault_every_s, help="s")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--round-robin", action="store_true", help="faults in turn over the kinds, not at random"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}"
    )
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--conversations", type=int, default=d.conversations)
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per turn")
    parser.add_argument("--freeze", type=float, default=d.freeze_s, help="s; 0: 6 heartbeats")
    parser.add_argument("--redis-down", type=float, default=d.redis_down_s, help="s")
    parser.add_argument("--quiet", type=float, default=d.quiet_s, help="no faults in the last s")
    parser.add_argument("--drain", type=float, default=d.drain_s, help="s at most")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default=d.db)
    parser.add_argument("--model", help="a checkpoint (default: build the tiny test one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak-latest.json")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        parser.error(f"unknown fault kinds {sorted(unknown)}; of {', '.join(KINDS)}")
    config = SoakConfig(
        minutes=args.minutes,
        fault_every_s=args.fault_every,
        seed=args.seed,
        round_robin=args.round_robin,
        kinds=kinds,
        workers=args.workers,
        conversations=args.conversations,
        frames=args.frames,
        freeze_s=args.freeze,
        redis_down_s=args.redis_down,
        quiet_s=args.quiet,
        drain_s=args.drain,
        db=args.db,
        model=args.model,
    )
    result = soak(config)
    print_and_save(table(result), result, args.out)
    print(f"wrote {args.out}")
    failed = failures(result)
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
