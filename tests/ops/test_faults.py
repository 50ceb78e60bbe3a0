"""The fault matrix (issue 12): real processes, real faults, and every accepted turn spoken
exactly once with the engine's codes, the service recovering without a human.

Two deployments (``tests.processes.Deployment``): ``up`` (one ``parley up`` process, SQLite)
and ``separate`` (``parley api`` + ``parley worker`` processes on PostgreSQL, which the test
restarts ~1 s after any of them exits, as docker compose's ``restart: unless-stopped`` would).
Each deployment has a Redis server of the test's own. The cases of a kind share one running
deployment (``Pool``), which each leaves whole; a case that fails has it replaced. The worker
frozen and PostgreSQL restarted cases get deployments of their own.

Moments: ``idle`` (no turn in flight), ``accepted`` (at once after the last 202), ``mid_turn``
(long turns running, a few frames made), ``storing`` (a finished turn's store held up by a lock
the test takes: ``LOCK TABLE turn_media`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite; the
fault lands while it waits, then the lock is let go).

Every case checks: each post's turn ends ``succeeded``; one turn row per post, in order; each
turn's codes are what the engine (in this process) speaks with exactly the earlier turns as
context; no job is left queued or running in SQL. It reports the time from the fault to the
success of a turn posted once what was killed is back (``RECOVERY``, printed at the end).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import func, select

from shared.audio import containers as audio
from shared.db.engine import make_engine, make_session_factory
from shared.db.models import Job
from shared.settings import Settings
from tests.expected import expected_codes, served_codes
from tests.pg_cluster import PgCluster, parley_cluster
from tests.processes import RECOVERY, Deployment
from tests.servers import OwnRedis
from tests.stack import database

SHORT = {"max_audio_length_ms": 800, "temperature": 0}  # 10 frames
LONG = {"max_audio_length_ms": 30_000, "temperature": 0}  # 375 frames: running at the fault
LONGEST = {"max_audio_length_ms": 150_000, "temperature": 0}  # 1875 frames: streaming at it
REDIS_AWAY_S = 3.0  # how long a killed Redis stays away
PG_AWAY_S = 2.0
DB_OF = {"up": "sqlite", "separate": "postgresql"}


@dataclass
class Posted:
    cid: str
    id: str
    job_id: str
    speaker: int
    text: str
    params: dict[str, Any]


@dataclass
class Case:
    """One fault case: its deployment, what it posted, and its report."""

    name: str
    dep: Deployment
    posted: dict[str, list[Posted]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ok: bool = False  # reached its end: its deployment may serve the next case
    exits_before: int = 0
    redis: OwnRedis | None = None

    def post(self, cid: str, speaker: int, text: str, params: dict[str, Any]) -> Posted:
        got = self.dep.say(cid, speaker, text, **params)
        turn = Posted(cid, got["id"], got["job_id"], speaker, text, params)
        self.posted.setdefault(cid, []).append(turn)
        return turn

    def conversations(self, first: dict[str, Any], n: int = 3) -> list[list[Posted]]:
        """``n`` conversations of two turns each: ``first``, then a short answer."""
        out = []
        for i in range(n):
            cid = self.dep.conversation()
            out.append(
                [
                    self.post(cid, 0, f"Conversation {i} opens here.", first),
                    self.post(cid, 1, f"And conversation {i} answers.", SHORT),
                ]
            )
        return out

    def wait_running(self, turn: Posted, frames: int = 3) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while True:
            job = self.dep.job(turn.job_id)
            if job["status"] == "running" and job["progress"].get("frames", 0) >= frames:
                return job
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, (job, self.dep.logs())
            time.sleep(0.02)

    def probe(self, fault_at: float) -> float:
        """Post a short turn in a new conversation as soon as the API takes it (waiting out a
        refused connection or a 503), wait for its success; the time since the fault."""
        deadline = time.monotonic() + 90
        while True:
            try:
                r = self.dep.http.post("/v1/conversations", json={})
                if r.status_code == 201:
                    break
                assert r.status_code == 503, r.text
            except httpx.TransportError:
                pass
            self.dep.check_alive()
            assert time.monotonic() < deadline, self.dep.logs()
            time.sleep(0.1)
        turn = self.post(r.json()["id"], 0, "The next turn after the fault.", SHORT)
        done = self.dep.wait_job(turn.job_id, timeout=90)
        assert done["status"] == "succeeded", (done, self.dep.logs())
        return time.monotonic() - fault_at

    def report(self, recovered_s: float) -> None:
        exits = [f"{role} {code}" for role, _, code in self.dep.exits[self.exits_before :]]
        if exits:
            self.notes.append(f"restarted by the test: {', '.join(exits)}")
        RECOVERY.append((self.name, recovered_s, "; ".join(n for n in self.notes if n)))
        self.ok = True


_EXPECTED: dict[tuple[Any, ...], np.ndarray] = {}


def expected(engine: Any, dep: Deployment, context: list[dict[str, Any]], turn: Posted) -> Any:
    """The engine's codes for ``turn`` after ``context`` (served turns), computed once per
    distinct (context codes, speaker, text, params) for the whole session."""
    ctx = tuple(
        (t["speaker"], t["text"], served_codes(dep, turn.cid, t["id"]).tobytes()) for t in context
    )
    key = (ctx, turn.speaker, turn.text, tuple(sorted(turn.params.items())))
    if key not in _EXPECTED:
        _EXPECTED[key] = expected_codes(
            engine, dep, turn.cid, context, turn.speaker, turn.text, **turn.params
        )
    return _EXPECTED[key]


def check_exactly_once(case: Case, engine: Any) -> None:
    dep = case.dep
    for turns in case.posted.values():
        for turn in turns:
            done = dep.wait_job(turn.job_id, timeout=90)
            assert done["status"] == "succeeded", (done, dep.logs())
    for cid, turns in case.posted.items():
        served = dep.turns(cid)
        assert [t["id"] for t in served] == [t.id for t in turns], (served, turns)
        assert all(t["status"] == "succeeded" for t in served), served
        for k, turn in enumerate(turns):
            np.testing.assert_array_equal(
                served_codes(dep, cid, turn.id),
                expected(engine, dep, served[:k], turn),
                err_msg=f"turn {k} of {cid}",
            )
    db = make_engine(Settings(database_url=dep.db_url))
    try:
        with make_session_factory(db)() as session:
            by_status = dict(
                session.execute(
                    select(Job.status, func.count())
                    .where(Job.conversation_id.in_(list(case.posted)))
                    .group_by(Job.status)
                ).all()
            )
    finally:
        db.dispose()
    posts = sum(len(t) for t in case.posted.values())
    assert by_status == {"succeeded": posts}, by_status  # nothing queued, running, or doubled


# --- holding up a store ------------------------------------------------------------------------


class StoreBlock:
    """Holds up every store of a finished turn while held: a lock on ``turn_media`` on
    PostgreSQL (the store waits on it, visibly in ``pg_locks``), the write lock on SQLite."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.sqlite = db_url.startswith("sqlite")
        self.conn: Any = None
        self.released_at: datetime | None = None

    def hold(self) -> None:
        if self.sqlite:
            path = self.db_url.removeprefix("sqlite:///")
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = psycopg.connect(self.db_url)
            self.conn.execute("LOCK TABLE turn_media IN ACCESS EXCLUSIVE MODE")

    def wait_blocked(self, case: Case, turn: Posted) -> None:
        """Until ``turn`` has made all its frames and (PostgreSQL) its store waits on the lock.
        SQLite cannot show a waiter: the turn is given a second to encode and reach the store."""
        frames = turn.params["max_audio_length_ms"] // audio.FRAME_MS
        case.wait_running(turn, frames=frames)
        if self.sqlite:
            time.sleep(1.0)
            return
        deadline = time.monotonic() + 60
        with psycopg.connect(self.db_url, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON l.relation = c.oid"
                " WHERE c.relname = 'turn_media' AND NOT l.granted"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, case.dep.logs()
                time.sleep(0.05)

    def release(self) -> None:
        if self.conn is not None:
            self.released_at = datetime.now(UTC)  # before: the store may commit at once
            self.conn.rollback() if not self.sqlite else self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None

    def check_stored_after(self, case: Case, turn: Posted) -> None:
        """The turn was stored after the lock was let go: the fault found it storing."""
        assert self.released_at is not None
        finished = datetime.fromisoformat(case.dep.job(turn.job_id)["finished_at"])
        assert finished >= self.released_at, (finished, self.released_at)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def deploy(
    tmp_path: Path, tiny_model_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Case]]:
    """``deploy(kind, redis, db_url=None, workers=1)``: a started deployment in a ``Case``."""
    made: list[Deployment] = []
    contexts: list[Any] = []

    def build(kind: str, redis: OwnRedis, *, db_url: str | None = None, workers: int = 1) -> Case:
        if db_url is None:
            ctx = database(DB_OF[kind], tmp_path)
            db_url = ctx.__enter__()
            contexts.append(ctx)
        tmp = tmp_path / f"{kind}-{len(made)}"
        tmp.mkdir()
        dep = Deployment(
            kind,
            tmp=tmp,
            db_url=db_url,
            redis_url=redis.url,
            model=str(tiny_model_dir),
            workers=workers,
            max_audio_length_ms=LONGEST["max_audio_length_ms"],
        )
        made.append(dep)
        began = time.monotonic()
        dep.start()
        case = Case(request.node.name, dep)
        case.notes.append(f"started in {time.monotonic() - began:.1f} s")
        return case

    yield build
    for dep in made:
        dep.close()
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


def restart_redis(redis: OwnRedis, *, empty: bool) -> None:
    """Start a killed Redis again on its port: with every write it acknowledged (it persists
    them all), or, ``empty``, with its files removed first."""
    if empty:
        shutil.rmtree(redis.workdir)
    redis.start()


class Pool:
    """One running deployment per kind, each on its own database and Redis (persisting, so a
    case may restart it with its data or empty), shared by the cases that leave it whole: a
    case that fails has its deployment replaced for the next one. The cases below stand it up
    again themselves (each restarts what it killed, or lets the deployment do it)."""

    def __init__(self, tmp: pytest.TempPathFactory, model: Path) -> None:
        self.tmp = tmp
        self.model = model
        self.live: dict[str, tuple[Deployment, OwnRedis, Any]] = {}

    def take(self, kind: str, name: str) -> tuple[Case, OwnRedis]:
        if kind not in self.live:
            tmp = self.tmp.mktemp(f"shared-{kind}")
            redis = OwnRedis(tmp / "redis", persist=True)
            redis.start()
            ctx = database(DB_OF[kind], tmp)
            dep = Deployment(
                kind,
                tmp=tmp,
                db_url=ctx.__enter__(),
                redis_url=redis.url,
                model=str(self.model),
                max_audio_length_ms=LONGEST["max_audio_length_ms"],
            )
            self.live[kind] = (dep, redis, ctx)
            began = time.monotonic()
            dep.start()
            note = f"started in {time.monotonic() - began:.1f} s"
        else:
            dep, redis, _ = self.live[kind]
            note = f"shared; ready in {dep.wait_ready():.1f} s"
        case = Case(name, dep, exits_before=len(dep.exits))
        case.notes.append(note)
        return case, redis

    def discard(self, kind: str) -> None:
        dep, redis, ctx = self.live.pop(kind)
        dep.close()
        if redis.proc is not None:
            redis.kill()
        ctx.__exit__(None, None, None)

    def close(self) -> None:
        for kind in list(self.live):
            self.discard(kind)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Pool]:
    found = Pool(tmp_path_factory, tiny_model_dir)
    yield found
    found.close()


@pytest.fixture
def shared(pool: Pool, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Case]]:
    """``shared(kind)``: the module's running deployment of ``kind`` (and its Redis as
    ``case.redis``); replaced after a case that did not reach its end."""
    taken: list[tuple[str, Case]] = []

    def take(kind: str) -> Case:
        case, redis = pool.take(kind, request.node.name)
        case.redis = redis
        taken.append((kind, case))
        return case

    yield take
    for kind, case in taken:
        if not case.ok and kind in pool.live:
            pool.discard(kind)


# --- moments ----------------------------------------------------------------------------------


def reach_moment(case: Case, moment: str) -> tuple[Posted | None, StoreBlock | None]:
    """Post what the moment needs and return when it has come: (the turn it is about, the
    store block to let go after the fault, if any)."""
    if moment == "idle":
        return None, None
    if moment == "accepted":
        convs = case.conversations(SHORT)
        case.notes.append("")  # the kill's delay after the last 202, filled in by the fault
        return convs[0][0], None
    convs = case.conversations(LONG)
    first = convs[0][0]
    case.wait_running(first)
    if moment == "mid_turn":
        return first, None
    assert moment == "storing", moment
    block = StoreBlock(case.dep.db_url)
    block.hold()
    try:
        block.wait_blocked(case, first)
    except BaseException:
        block.release()
        raise
    return first, block


def accepted_gap(case: Case, last_post_at: float) -> None:
    if "" in case.notes:
        gap_ms = (time.monotonic() - last_post_at) * 1000
        case.notes[case.notes.index("")] = f"fault {gap_ms:.1f} ms after the last 202"


# --- Redis killed -----------------------------------------------------------------------------

REDIS_CASES = [
    pytest.param("up", moment, restart, id=f"up-{moment}-{restart}")
    for moment in ("idle", "accepted", "mid_turn", "storing")
    for restart in ("empty", "data")
] + [
    pytest.param("separate", "accepted", "empty", id="separate-accepted-empty"),
    pytest.param("separate", "storing", "data", id="separate-storing-data"),
]


@pytest.mark.parametrize(("kind", "moment", "restart"), REDIS_CASES)
def test_redis_killed(
    shared: Callable[[str], Case], engine: Any, kind: str, moment: str, restart: str
) -> None:
    case = shared(kind)
    redis = case.redis
    assert redis is not None
    turn, block = reach_moment(case, moment)
    last_post = time.monotonic()
    redis.kill()
    fault_at = time.monotonic()
    accepted_gap(case, last_post)
    if block is not None:
        block.release()
    time.sleep(REDIS_AWAY_S)
    restart_redis(redis, empty=restart == "empty")
    case.notes.append(f"Redis away {time.monotonic() - fault_at:.1f} s, back {restart}")
    if moment == "idle":
        case.conversations(SHORT)
    recovered = case.probe(fault_at)
    check_exactly_once(case, engine)
    if block is not None and turn is not None:
        block.check_stored_after(case, turn)
    case.report(recovered)


# --- a worker killed --------------------------------------------------------------------------

WORKER_CASES = [
    pytest.param("separate", sig, moment, id=f"separate-{sig}-{moment}")
    for sig in ("SIGKILL", "SIGTERM")
    for moment in ("accepted", "mid_turn", "storing")
] + [pytest.param("up", "SIGKILL", "mid_turn", id="up-SIGKILL-mid_turn")]


def worker_pid(case: Case, job_id: str) -> int:
    """The pid of the worker running ``job_id``, from its heartbeat."""
    name = case.dep.job(job_id)["worker"]
    return case.dep.worker_pids()[name]


@pytest.mark.parametrize(("kind", "sig", "moment"), WORKER_CASES)
def test_worker_killed(
    shared: Callable[[str], Case], engine: Any, kind: str, sig: str, moment: str
) -> None:
    case = shared(kind)
    (only,) = case.dep.worker_processes()  # asked before: `accepted` has no time to ask
    turn, block = reach_moment(case, moment)
    pid = worker_pid(case, turn.job_id) if turn and moment != "accepted" else only.pid
    last_post = time.monotonic()
    os.kill(pid, getattr(signal, sig))
    fault_at = time.monotonic()
    accepted_gap(case, last_post)
    if block is not None:
        block.release()
    recovered = case.probe(fault_at)
    check_exactly_once(case, engine)
    if block is not None and turn is not None:
        block.check_stored_after(case, turn)
    assert pid not in [p.pid for p in case.dep.worker_processes()]  # a new one took over
    case.report(recovered)


# --- a worker frozen --------------------------------------------------------------------------


def test_worker_frozen_past_heartbeat(
    deploy: Callable[..., Case], own_redis: OwnRedis, engine: Any
) -> None:
    """SIGSTOP longer than its heartbeat lives: the other worker takes its turn over; resumed,
    it finds its attempt taken over and discards it."""
    case = deploy("separate", own_redis, workers=2)
    convs = case.conversations(LONG)
    first = convs[0][0]
    job = case.wait_running(first)
    frozen = job["worker"]
    pid = case.dep.worker_pids()[frozen]
    os.kill(pid, signal.SIGSTOP)
    fault_at = time.monotonic()
    try:
        deadline = time.monotonic() + 60
        while frozen in case.dep.worker_pids():  # its heartbeat key expires
            assert time.monotonic() < deadline
            time.sleep(0.1)
        case.notes.append(f"heartbeat gone {time.monotonic() - fault_at:.1f} s after SIGSTOP")
        while case.dep.job(first.job_id)["attempts"] < 2:  # the other worker took it over
            assert time.monotonic() < deadline, case.dep.logs()
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    case.notes.append(f"resumed after {time.monotonic() - fault_at:.1f} s")
    recovered = case.probe(fault_at)
    check_exactly_once(case, engine)
    done = case.dep.job(first.job_id)
    assert done["attempts"] == 2 and done["worker"] != frozen, done
    # The resumed attempt finds the job no longer its own and stores nothing, and says so.
    deadline = time.monotonic() + 120
    while f"job {first.job_id} was" not in case.dep.logs(tail=None):
        assert time.monotonic() < deadline, case.dep.logs()
        time.sleep(0.2)
    said = [ln for ln in case.dep.logs(tail=None).splitlines() if f"job {first.job_id} was" in ln]
    assert all("discarding" in ln and "cancelled" not in ln for ln in said), said
    assert any("taken over" in ln or "put back in the queue" in ln for ln in said), said
    case.report(recovered)


# --- the API killed with streams open -----------------------------------------------------------


class Listener(threading.Thread):
    """Streams one turn's PCM over real HTTP until the stream ends or is cut."""

    def __init__(self, base_url: str, cid: str, tid: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.path = f"/v1/conversations/{cid}/turns/{tid}/stream?format=pcm"
        self.body = b""
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=60) as client,
                client.stream("GET", self.path) as r,
            ):
                assert r.status_code == 200, r.status_code
                for chunk in r.iter_bytes():
                    self.body += chunk
        except Exception as exc:  # cut: that is what the test is about
            self.error = exc


def stored_pcm(dep: Deployment, cid: str, tid: str) -> bytes:
    r = dep.http.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=wav")
    assert r.status_code == 200, r.text
    return r.content[44:]  # the samples after the WAV's 44-byte header


@pytest.mark.parametrize("kind", ["up", "separate"])
def test_api_killed_with_streams_open(
    shared: Callable[[str], Case], engine: Any, kind: str
) -> None:
    case = shared(kind)
    longest = case.post(case.dep.conversation(), 0, "A turn streamed to two listeners.", LONGEST)
    convs = case.conversations(LONG, n=1)
    streamed = [longest, longest, convs[0][0]]
    case.wait_running(longest)
    base = str(case.dep.http.base_url)
    listeners = [Listener(base, t.cid, t.id) for t in streamed]
    for listener in listeners:
        listener.start()
    deadline = time.monotonic() + 60
    while not all(listener.body for listener in listeners):
        assert time.monotonic() < deadline, [(len(x.body), x.error) for x in listeners]
        time.sleep(0.02)
    os.kill(case.dep.api_pid(), signal.SIGKILL)
    fault_at = time.monotonic()
    for listener in listeners:
        listener.join(timeout=60)
        assert not listener.is_alive()
    cut = [x for x in listeners if x.error is not None]
    assert cut, "no stream was cut by the API's death"
    case.notes.append(f"{len(cut)} of {len(listeners)} streams cut")
    recovered = case.probe(fault_at)
    check_exactly_once(case, engine)
    for turn, listener in zip(streamed, listeners, strict=True):
        pcm = stored_pcm(case.dep, turn.cid, turn.id)
        frames = turn.params["max_audio_length_ms"] // audio.FRAME_MS
        assert len(pcm) == frames * audio.SAMPLE_RATE * audio.FRAME_MS // 1000 * 2
        assert pcm[: len(listener.body)] == listener.body  # what was heard is the stored audio
        again = Listener(base, turn.cid, turn.id)
        again.run()
        assert again.error is None and again.body == pcm  # a finished turn streams as stored
    case.report(recovered)


# --- PostgreSQL restarted ---------------------------------------------------------------------


@pytest.fixture
def pg() -> Iterator[tuple[PgCluster, str]]:
    """A PostgreSQL cluster of the test's own (request it before ``deploy``: it outlives it)."""
    with parley_cluster() as found:
        yield found


@pytest.mark.parametrize("kind", ["up", "separate"])
def test_postgresql_restarted(
    pg: tuple[PgCluster, str],
    deploy: Callable[..., Case],
    own_redis: OwnRedis,
    engine: Any,
    kind: str,
) -> None:
    cluster, url = pg
    case = deploy(kind, own_redis, db_url=url)
    convs = case.conversations(LONG)
    case.wait_running(convs[0][0])
    cluster.stop()
    fault_at = time.monotonic()
    time.sleep(PG_AWAY_S)
    cluster.start()
    case.notes.append(f"PostgreSQL away {time.monotonic() - fault_at:.1f} s")
    recovered = case.probe(fault_at)
    check_exactly_once(case, engine)
    case.report(recovered)
