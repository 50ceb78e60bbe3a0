"""Whole Parley deployments (``parley up``, or ``parley api`` + ``parley worker``) run as real
processes for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.servers import free_port

FINISHED = {"succeeded", "failed", "cancelled"}
RESTART_AFTER_S = 1.0  # the test's `restart: unless-stopped` for the `separate` deployment
NO_WORKER_PATIENCE_S = 45.0  # `up` with no worker process this long (its backoff is 30 s at most)


# (case, seconds from the fault to the success of the next turn, notes), for the run's summary
RECOVERY: list[tuple[str, float, str]] = []


class Gone(AssertionError):
    """The deployment cannot recover by itself: what would restart a process is gone."""


class Deployment:
    """Parley as an operator runs it, on a given database and Redis, over real HTTP.

    ``up``: one ``parley up --port P --workers N`` process, which runs (and, with supervision,
    restarts) the API and the workers. ``separate``: ``parley api`` and N ``parley worker``
    processes, which this class restarts ~1 s after any of them exits, as docker compose's
    ``restart: unless-stopped`` would.
    """

    def __init__(
        self,
        kind: str,
        *,
        tmp: Path,
        db_url: str,
        redis_url: str,
        model: str,
        workers: int = 1,
        **settings: Any,
    ) -> None:
        assert kind in ("up", "separate"), kind
        self.kind = kind
        self.tmp = tmp
        self.db_url = db_url
        self.workers = workers
        self.port = free_port()
        self.env = {
            **os.environ,
            "PARLEY_DATABASE_URL": db_url,
            "PARLEY_REDIS_URL": redis_url,
            "PARLEY_MODEL": model,
            "PARLEY_WORKER_TORCH_THREADS": "1",
            "PARLEY_WORKER_HEARTBEAT_S": "1",
            "PARLEY_RATE_LIMIT_PER_MINUTE": "0",
            "PARLEY_MAX_AUDIO_LENGTH_MS": "30000",
            "PARLEY_WORKER_BROKER_TIMEOUT_S": "15",  # longer than a Redis restart here (3 s) takes
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({f"PARLEY_{k.upper()}": str(v) for k, v in settings.items()})
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # by role: up, api, worker-K
        self._starts: dict[str, int] = {}
        self.exits: list[tuple[str, int, int]] = []  # (role, pid, code) of what exited
        self._seen: dict[int, psutil.Process] = {}  # every process of ours, to end them all
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._no_worker_since: float | None = None

    # --- processes -------------------------------------------------------------------------

    def _launch(self, role: str, *args: str) -> None:
        n = self._starts.get(role, 0)
        self._starts[role] = n + 1
        with open(self.tmp / f"{role}.{n}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parley", *args],
                cwd=self.tmp,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self._procs[role] = proc
        self._seen[proc.pid] = psutil.Process(proc.pid)

    def _launch_role(self, role: str) -> None:
        if role == "up":
            self._launch("up", "up", "--port", str(self.port), "--workers", str(self.workers))
        elif role == "api":
            self._launch("api", "api", "--port", str(self.port))
        else:
            self._launch(role, "worker")

    def start(self) -> None:
        if self.kind == "up":
            self._launch_role("up")
        else:
            self._launch_role("api")
            for k in range(self.workers):
                self._launch_role(f"worker-{k}")
            self._keeper = threading.Thread(target=self._keep, name="restarter", daemon=True)
            self._keeper.start()
        self.wait_ready()

    def _keep(self) -> None:
        """Restart any process that exits, ~1 s later (``separate`` only)."""
        due: dict[str, float] = {}
        while not self._closing.wait(0.1):
            with self._lock:
                for role, proc in list(self._procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    if role not in due:
                        self.exits.append((role, proc.pid, code))
                        self._note(f"{role} (pid {proc.pid}) exited with code {code}; restarting")
                        due[role] = time.monotonic() + RESTART_AFTER_S
                    elif time.monotonic() >= due[role]:
                        del due[role]
                        self._launch_role(role)

    def _note(self, line: str) -> None:
        with open(self.tmp / "harness.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def children(self) -> list[psutil.Process]:
        """The ``parley up`` process's descendants (``up`` only)."""
        up = self._procs["up"]
        try:
            found = psutil.Process(up.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in found:
            self._seen.setdefault(child.pid, child)
        return found

    @staticmethod
    def _is(proc: psutil.Process, command: str) -> bool:
        try:
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return False
        return cmdline[1:4] == ["-m", "parley", command]

    def api_pid(self) -> int:
        """The process that serves HTTP: ``parley api``, or ``parley up`` itself while it runs
        uvicorn in its own process."""
        if self.kind == "separate":
            return self._procs["api"].pid
        apis = [c.pid for c in self.children() if self._is(c, "api")]
        return apis[0] if apis else self._procs["up"].pid

    def worker_processes(self) -> list[psutil.Process]:
        if self.kind == "separate":
            with self._lock:
                procs = [p for r, p in self._procs.items() if r.startswith("worker-")]
            return [self._seen[p.pid] for p in procs if p.poll() is None]
        return [c for c in self.children() if self._is(c, "worker") and c.is_running()]

    def worker_pids(self) -> dict[str, int]:
        """Live workers by name, from their heartbeats (needs Redis)."""
        return {w["name"]: int(w["pid"]) for w in self.ready()[1].get("workers", [])}

    def check_alive(self) -> None:
        """Raise :class:`Gone` when nothing will bring the deployment back by itself."""
        if self.kind == "separate":
            return
        up = self._procs["up"]
        if up.poll() is not None:
            raise Gone(f"`parley up` exited with code {up.returncode}")
        if self.worker_processes():
            self._no_worker_since = None
            return
        now = time.monotonic()
        if self._no_worker_since is None:
            self._no_worker_since = now
        elif now - self._no_worker_since > NO_WORKER_PATIENCE_S:
            raise Gone(f"`parley up` has had no worker process for {NO_WORKER_PATIENCE_S:.0f} s")

    def logs(self, tail: int | None = 3000) -> str:
        parts = []
        for path in sorted(self.tmp.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-tail:] if tail else text}")
        return "\n".join(parts)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        if "up" in self._procs:
            self.children()  # note the latest descendants before they are orphaned
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen one could not stop
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Whatever `parley up` left behind (a worker of a supervisor that was killed).
        left = [p for p in self._seen.values() if p.is_running()]
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()
                p.kill()
        psutil.wait_procs(left, timeout=10)
        self.http.close()

    # --- HTTP --------------------------------------------------------------------------------

    def ready(self) -> tuple[int, dict[str, Any]]:
        try:
            r = self.http.get("/readyz")
        except httpx.TransportError as exc:
            return 0, {"error": repr(exc)}
        return r.status_code, r.json()

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait until the API says ready with all workers live; the time it took."""
        began = time.monotonic()
        while True:
            code, body = self.ready()
            if (
                code == 200
                and sum(bool(w.get("consuming", True)) for w in body["workers"]) >= self.workers
                and len(self.worker_processes()) == self.workers  # none still shutting down
            ):
                self._no_worker_since = None
                return time.monotonic() - began
            self.check_alive()
            if time.monotonic() - began > timeout:
                raise AssertionError(f"not ready after {timeout} s: {body}\n{self.logs()}")
            time.sleep(0.1)

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        r = self.http.post(path, json=body)
        assert r.status_code == expect, (path, r.status_code, r.text)
        return dict(r.json())

    def conversation(self) -> str:
        return str(self.post("/v1/conversations", {}, 201)["id"])

    def say(self, cid: str, speaker: int, text: str, **params: Any) -> dict[str, Any]:
        body = {"speaker": speaker, "text": text, "params": params}
        return self.post(f"/v1/conversations/{cid}/turns", body, 202)

    def get(self, path: str, timeout: float = 120) -> Any:
        """GET, waiting out an API or a database that is away (connection refused, 503)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.http.get(path)
                if r.status_code != 503:
                    assert r.status_code == 200, (path, r.status_code, r.text)
                    return r.json()
            except httpx.TransportError:
                pass
            self.check_alive()
            assert time.monotonic() < deadline, f"GET {path}: no answer\n{self.logs()}"
            time.sleep(0.1)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/jobs/{job_id}"))

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']}\n{self.logs()}")
            time.sleep(0.05)

    def codes(self, cid: str, tid: str) -> list[list[int]]:
        return list(self.get(f"/v1/conversations/{cid}/turns/{tid}/codes")["codes"])

    def turns(self, cid: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/conversations/{cid}/turns"))
