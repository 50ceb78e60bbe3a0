"""Redis behind Sentinel: a real primary, one replica and three sentinels of the test's own (the
bundled ``redis-server``, on free ports; the machine's shared Redis is never touched).

A whole Parley stack runs on the ``redis+sentinel://`` URL; the primary is killed (SIGKILL)
mid-run; the sentinels promote the replica, and every client (the API's, the workers', the
broker's, a live stream's) follows it. Every accepted turn completes exactly once with the
engine's codes, and a turn posted after the promotion is spoken.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis import Redis
from redis.exceptions import RedisError

from shared.redis_io.server import bundled_redis_server, redis_answers
from tests.expected import expected_codes, served_codes
from tests.integration.test_flower import flower, poll, queue_lengths
from tests.integration.test_redis_loss import LONG, LONGEST, SHORT, Listener
from tests.servers import free_port
from tests.stack import Stack, wait_until

SERVICE = "parley-primary"


class SentinelSet:
    """A primary, a replica of it, and three sentinels monitoring it (quorum 2), each a
    ``redis-server`` process of the test's own that it may kill."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _run(self, name: str, args: list[str]) -> None:
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "server.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [bundled_redis_server(), *args], cwd=folder, stdout=log, stderr=log
            )

    def _server(self, name: str, port: int, *extra: str) -> None:
        self._run(
            name,
            ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.workdir / name), *extra],
        )

    def start(self) -> None:
        self._server("primary", self.primary_port)
        self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port)
        )
        for i, port in enumerate(self.sentinel_ports):
            folder = self.workdir / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"  # the sentinel rewrites it: a file of its own
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 4000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._run(f"sentinel-{i}", [str(conf), "--sentinel"])
        self.wait(self._ready, what="the sentinel set to form")

    def wait(self, check: Callable[[], Any], *, what: str, timeout: float = 60) -> None:
        """``wait_until``, failing with the servers' logs."""
        try:
            wait_until(check, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def _ready(self) -> bool:
        """The replica in sync, and every sentinel knowing the replica and the other two."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
        try:
            replica = Redis(port=self.replica_port, socket_timeout=2)
            with replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            for port in self.sentinel_ports:
                with Redis(port=port, socket_timeout=2, decode_responses=True) as sentinel:
                    state = sentinel.sentinel_master(SERVICE)
                    if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
                        return False
        except RedisError:
            return False
        return True

    def primary_now(self) -> int | None:
        """The primary's port as the first answering sentinel names it."""
        for port in self.sentinel_ports:
            try:
                with Redis(port=port, socket_timeout=2, decode_responses=True) as sentinel:
                    addr = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                    return int(addr[1]) if addr else None
            except RedisError:
                continue
        return None

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.parent.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.workdir.glob("*/server.log"))
        )


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    redis_set = SentinelSet(tmp_path / "redis")
    try:
        redis_set.start()
        yield redis_set
    finally:
        redis_set.stop()


def test_redis_answers_asks_the_sentinels(sentinel_set: SentinelSet) -> None:
    assert redis_answers(sentinel_set.url)
    hosts = sentinel_set.url.split("//")[1].split("/")[0]
    assert not redis_answers(f"redis+sentinel://{hosts}/no-such-service/0")
    assert not redis_answers(f"redis+sentinel://127.0.0.1:{free_port()}/{SERVICE}")
    assert not redis_answers("redis+sentinel://127.0.0.1:x/malformed")


def test_flower_reads_the_queue_through_the_sentinels(
    sentinel_set: SentinelSet, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack("sqlite", workers=0, redis_url=sentinel_set.url)
    queue = stack.settings.queue_name
    with flower(stack) as client:
        for _ in range(2):
            stack.say(stack.conversation(), 0, "Waiting in the broker.")
        assert poll(lambda: queue_lengths(client), lambda q: q.get(queue) == 2) == {queue: 2}
    # The broker's messages are on the primary the sentinels name, under Parley's prefix.
    with Redis(port=sentinel_set.primary_port) as primary:
        assert primary.llen(f"{stack.settings.redis_prefix}:celery:{queue}") == 2


def test_a_failover_loses_no_turn(
    sentinel_set: SentinelSet, make_stack: Callable[..., Stack], engine: Any
) -> None:
    stack = make_stack("postgresql", workers=1, redis_url=sentinel_set.url)
    [worker] = stack.workers
    # Three conversations, each a long turn (the first long enough to be running at the kill)
    # and a short one behind it in SQL, sent to the broker when the long one ends.
    posted: dict[str, list[dict[str, Any]]] = {}
    params: dict[str, dict[str, Any]] = {}
    for i in range(3):
        cid = stack.conversation()
        opening = LONG if i else LONGEST
        posted[cid] = [
            stack.say(cid, 0, f"Conversation {i} opens with a long turn.", **opening),
            stack.say(cid, 1, f"And conversation {i} answers briefly.", **SHORT),
        ]
        params[posted[cid][0]["id"]] = opening
    first_cid = next(iter(posted))
    first_job = posted[first_cid][0]["job_id"]

    def well_under_way() -> bool:
        job = stack.client.get(f"/v1/jobs/{first_job}").json()
        return job["status"] == "running" and job["progress"]["frames"] >= 3

    wait_until(well_under_way, timeout=90, what="the first turn to run")
    listener = Listener(stack, first_cid, posted[first_cid][0]["id"])
    listener.start()
    wait_until(lambda: listener.body, timeout=30, what="the first streamed audio")

    assert sentinel_set.primary_now() == sentinel_set.primary_port
    # The workers' recovery passes mark Redis with the run id of the server holding the data.
    with Redis(port=sentinel_set.primary_port) as primary:
        old_server = primary.info("server")["run_id"]
    wait_until(
        lambda: stack.redis.get(stack.keys.epoch()) == old_server.encode(),
        timeout=30,
        what="the epoch marker to name the primary",
    )
    killed_at = time.monotonic()
    sentinel_set.kill("primary")
    # Before the promotion: a turn is still accepted (kept in SQL) and spoken afterwards.
    early_cid = stack.conversation()
    posted[early_cid] = [stack.say(early_cid, 0, "Posted while the primary was gone.", **SHORT)]

    sentinel_set.wait(
        lambda: sentinel_set.primary_now() == sentinel_set.replica_port,
        what="the sentinels to promote the replica",
    )
    promoted_at = time.monotonic()
    next_cid = stack.conversation()
    turn = stack.say(next_cid, 0, "Posted after the promotion.", **SHORT)
    posted[next_cid] = [turn]
    done = stack.wait_job(turn["job_id"], timeout=240)
    spoken_at = time.monotonic()
    assert done["status"] == "succeeded", (done, stack.worker_logs())
    print(
        f"\nfailover: kill -> promotion {promoted_at - killed_at:.1f} s; "
        f"kill -> next turn succeeded {spoken_at - killed_at:.1f} s "
        f"(posted {promoted_at - killed_at:.1f} s after the kill)"
    )

    for turns in posted.values():
        for t in turns:
            job = stack.wait_job(t["job_id"], timeout=240)
            assert job["status"] == "succeeded", (job, stack.worker_logs())
    wait_until(lambda: stack.client.get("/readyz").status_code == 200, timeout=60, what="ready")
    # The one worker rode the failover out: its consumer reconnected to the new primary, and
    # its heartbeat there says so (what compose's worker healthcheck reads, via the sentinels).
    assert worker.poll() is None and stack.workers == [worker], stack.worker_logs()
    check = subprocess.run(
        [sys.executable, "-m", "parley", "healthcheck", "worker"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and check.stdout.startswith("healthy"), check.stderr

    # Exactly once: one row per post, in order, each with the codes the engine speaks with
    # exactly the earlier turns as context.
    for cid, turns in posted.items():
        served = stack.client.get(f"/v1/conversations/{cid}/turns").json()
        assert [t["id"] for t in served] == [t["id"] for t in turns]
        assert all(t["status"] == "succeeded" for t in served)
        for k, t in enumerate(served):
            expected = expected_codes(
                engine,
                stack,
                cid,
                served[:k],
                t["speaker"],
                t["text"],
                **params.get(t["id"], SHORT),
            )
            np.testing.assert_array_equal(served_codes(stack, cid, t["id"]), expected)

    # The listener streaming across the failover got the whole stored audio.
    listener.join(timeout=60)
    assert not listener.is_alive() and listener.status == 200
    stored = stack.client.get(
        f"/v1/conversations/{first_cid}/turns/{posted[first_cid][0]['id']}/audio?format=wav"
    )
    assert stored.status_code == 200
    assert listener.body == stored.content[44:]  # the samples after the 44-byte WAV header
    # The stack runs on the promoted replica now, and the workers saw that another server took
    # the old one's place (they re-sent from SQL what it may not have had).
    with Redis(port=sentinel_set.replica_port) as new_primary:
        assert new_primary.info("replication")["role"] == "master"
        new_server = new_primary.info("server")["run_id"]
        assert new_primary.get(stack.keys.epoch()) == new_server.encode() != old_server.encode()


def test_parley_up_starts_no_redis_for_a_sentinel_url(tmp_path: Path) -> None:
    """With a Sentinel URL nothing answers at, `parley up` says it starts no Redis, and does
    not; the API still starts (degraded)."""
    dead = [free_port(), free_port()]
    url = f"redis+sentinel://:s3cret@127.0.0.1:{dead[0]},127.0.0.1:{dead[1]}/{SERVICE}/0"
    api_port = free_port()
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'parley.db'}",
        "PARLEY_REDIS_URL": url,
    }
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "up", "--workers", "0", "--port", str(api_port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )

    def api_answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10).status_code == 503
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            return False

    try:
        wait_until(api_answers, timeout=120, what="the API to answer")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log.read_text()
    assert "no sentinel names a primary that answers; not starting one" in text, text
    assert "starting the bundled redis-server" not in text
    assert "s3cret" not in text and ":***@" in text
    assert not (tmp_path / ".parley" / "redis").exists()
