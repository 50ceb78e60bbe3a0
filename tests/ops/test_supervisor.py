"""`parley up`'s supervisor on real child processes: restarts with backoff, one log line per
exit, and a stop that ends every child."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parley.supervisor import Supervisor, command


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_until(sup: Supervisor, done, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, [c.exit_codes for c in sup.children]
        sup.poll_once()
        time.sleep(0.02)


def test_a_child_that_exits_is_restarted_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = tmp_path / "starts"
    # Each start appends a line; the first two exit with 5, the third keeps running.
    code = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        "sys.exit(5) if len(p.read_text()) < 3 else time.sleep(60)\n"
    )
    sup = Supervisor(backoff_s=0.05, stable_s=60)
    caplog.set_level(logging.INFO, logger="parley.supervisor")
    try:
        child = sup.add("flaky", command(python(code)))
        run_until(sup, lambda: child.restarts == 2 and counter.read_text() == "xxx")
        assert child.exit_codes == [5, 5]
        assert child.proc is not None and child.proc.poll() is None
    finally:
        sup.stop(timeout_s=5)
    assert child.proc is not None and child.proc.poll() is not None  # stopped with the rest
    exits = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
    assert len(exits) == 2
    assert exits[0].startswith("flaky (pid ") and "exited with code 5" in exits[0]
    assert "restarting in 0.1 s" in exits[0] or "restarting in 0.0 s" in exits[0]


def test_backoff_doubles_for_quick_exits_and_resets_after_a_stable_run() -> None:
    sup = Supervisor(backoff_s=1.0, backoff_max_s=8.0, stable_s=60)
    child = sup.add("c", command(python("pass")), proc=None)
    sup.stop(timeout_s=5)
    delays = []
    for quick in range(1, 7):
        child.quick_exits = quick
        delays.append(sup.delay_for(child))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_killed_child_is_restarted_and_stop_ends_all(tmp_path: Path) -> None:
    sup = Supervisor(backoff_s=0.05)
    try:
        a = sup.add("a", command(python("import time; time.sleep(60)")))
        b = sup.add("b", command(python("import time; time.sleep(60)")))
        assert a.proc is not None and b.proc is not None
        first = a.proc.pid
        a.proc.kill()
        run_until(sup, lambda: a.restarts == 1)
        assert a.proc is not None and a.proc.pid != first
        assert a.exit_codes == [-9] and b.restarts == 0
    finally:
        sup.stop(timeout_s=5)
    assert all(c.proc is not None and c.proc.poll() is not None for c in (a, b))
    sup.poll_once()  # after stop, nothing is restarted
    assert a.restarts == 1 and b.restarts == 0


def test_a_child_that_cannot_start_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def start() -> subprocess.Popen[bytes]:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("redis-server did not answer")
        return subprocess.Popen(python("import time; time.sleep(60)"))

    sup = Supervisor(backoff_s=0.05)
    try:
        child = sup.add("redis", start, proc=subprocess.Popen(python("import sys; sys.exit(1)")))
        run_until(sup, lambda: child.proc is not None and child.restarts == 1)
        assert len(attempts) == 3
    finally:
        sup.stop(timeout_s=5)
    assert "redis could not be restarted (redis-server did not answer)" in caplog.text


def test_a_misconfigured_child_stops_everything(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(backoff_s=0.05)
    try:
        other = sup.add("api", command(python("import time; time.sleep(60)")))
        bad = sup.add("worker-0", command(python("import sys; sys.exit(2)")))
        sup.run()  # returns: the misconfigured child stopped it
    finally:
        sup.stop(timeout_s=5)
    assert sup.fatal is bad and bad.restarts == 0
    assert other.proc is not None and other.proc.poll() is not None
    assert "worker-0 (pid" in caplog.text and "cannot start as configured" in caplog.text
