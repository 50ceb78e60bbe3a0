"""``parley up``'s process supervisor: start the children, reap them, restart what exits.

Each child (the bundled Redis when one is needed, every worker, the API) is a process of its
own. A child that exits for any reason is started again after a backoff (1 s, doubling to a
cap; back to 1 s once a child has run for a while), with one log line naming it, its pid, its
exit code and the delay. SQL is the truth, so a restarted worker loses nothing: what the dead
one held is re-run by recovery. :meth:`Supervisor.stop` ends them all, last started first.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# What `parley worker` and `parley api` exit with when they cannot start as configured.
EXIT_MISCONFIGURED = 2

Start = Callable[[], "subprocess.Popen[bytes]"]


def command(argv: Sequence[str]) -> Start:
    """A start function that runs ``argv`` with the supervisor's environment and output."""
    return lambda: subprocess.Popen(list(argv))


@dataclass
class Child:
    name: str
    start: Start
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    # Exits in a row of a child that had not yet run for `stable_s`: the backoff's exponent.
    quick_exits: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        *,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_s: float = 60.0,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self._clock = clock
        self.children: list[Child] = []
        self._stopping = threading.Event()
        # The child that exited as misconfigured, which stopped everything.
        self.fatal: Child | None = None

    def add(self, name: str, start: Start, *, proc: subprocess.Popen[bytes] | None = None) -> Child:
        """Supervise ``name``; ``start()`` makes its process. ``proc``: one already started."""
        child = Child(name, start, proc=proc, started_at=self._clock() if proc else 0.0)
        self.children.append(child)
        if proc is None:
            self._start(child)
        return child

    def _start(self, child: Child) -> None:
        child.proc = child.start()
        child.started_at = self._clock()
        child.restart_at = None

    def delay_for(self, child: Child) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, child.quick_exits - 1)))

    def poll_once(self) -> None:
        """Reap every child that exited and schedule its restart; start those that are due."""
        now = self._clock()
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                child.exit_codes.append(code)
                child.proc = None
                ran_s = now - child.started_at
                child.quick_exits = 1 if ran_s >= self.stable_s else child.quick_exits + 1
                if self._stopping.is_set():
                    continue
                if code == EXIT_MISCONFIGURED:
                    log.error(
                        "%s (pid %d) exited with code %d: it cannot start as configured (its "
                        "log says why); stopping everything",
                        child.name,
                        proc.pid,
                        code,
                    )
                    self.fatal = child
                    self._stopping.set()
                    return
                delay = self.delay_for(child)
                child.restart_at = now + delay
                log.warning(
                    "%s (pid %d) exited with code %s after %.1f s; restarting in %.1f s",
                    child.name,
                    proc.pid,
                    code,
                    ran_s,
                    delay,
                )
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                if self._stopping.is_set():
                    return
                try:
                    self._start(child)
                except Exception as exc:  # e.g. Redis that would not answer: try again later
                    child.quick_exits += 1
                    child.restart_at = now + self.delay_for(child)
                    log.error("%s could not be restarted (%s); trying again", child.name, exc)
                    continue
                child.restarts += 1
                assert child.proc is not None
                log.info(
                    "%s restarted (pid %d, restart %d)", child.name, child.proc.pid, child.restarts
                )

    def run(self) -> None:
        """Supervise until :meth:`stop` is called (from a signal handler or another thread)."""
        while not self._stopping.is_set():
            self.poll_once()
            self._stopping.wait(self.poll_s)

    def request_stop(self) -> None:
        """Make :meth:`run` return; restarts stop at once."""
        self._stopping.set()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child, last started first; SIGKILL what has not exited in time."""
        self._stopping.set()
        running = [c.proc for c in reversed(self.children) if c.proc is not None]
        for proc in running:
            if proc.poll() is None:
                proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
