"""`parley up`'s supervisor on real child processes: restarts with backoff, one log line per
exit, and a stop that ends every child."""

from __future__ import annotations

import sys

from parley.supervisor import Supervisor, command


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_backoff_doubles_for_quick_exits_and_resets_after_a_stable_run() -> None:
    sup = Supervisor(backoff_s=1.0, backoff_max_s=8.0, stable_s=60)
    child = sup.add("c", command(python("pass")), proc=None)
    sup.stop(timeout_s=5)
    delays = []
    for quick in range(1, 7):
        child.quick_exits = quick
        delays.append(sup.delay_for(child))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
