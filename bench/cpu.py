"""Where the CPU went during a benchmark phase (Linux ``/proc``; empty elsewhere).

:func:`snapshot` reads the machine's busy and total CPU time and the CPU time of this process
and of each ``parley`` child it started; :func:`usage` turns two snapshots into cores used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.perf_counter()
    machine_busy_s: float
    machine_total_s: float
    processes: dict[str, float]  # "client", "api", "worker-<pid>" → CPU s


def _process_cpu_s(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * TICK_S


def _role(pid: str) -> str | None:
    try:
        argv = (PROC / pid / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"parley" not in argv:
        return None
    if b"api" in argv:
        return "api"
    return f"worker-{pid}" if b"worker" in argv else None


def snapshot() -> Snapshot:
    processes: dict[str, float] = {}
    busy = total = 0.0
    if PROC.joinpath("stat").exists():
        cpu = PROC.joinpath("stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in cpu[:8]]  # user nice system idle iowait irq softirq steal
        total = sum(ticks) * TICK_S
        busy = total - (ticks[3] + ticks[4]) * TICK_S
        me = os.getpid()
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            got = _process_cpu_s(entry.name)
            role = _role(entry.name) if got is not None and got[0] == me else None
            if got is not None and role is not None:
                processes[role] = got[1]
    processes["client"] = time.process_time()
    return Snapshot(time.perf_counter(), busy, total, processes)


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Cores used between two snapshots: the whole machine (all users), and each process."""
    wall = after.at - before.at
    out: dict[str, float] = {}
    if after.machine_total_s > before.machine_total_s:
        share = (after.machine_busy_s - before.machine_busy_s) / (
            after.machine_total_s - before.machine_total_s
        )
        out["machine"] = share * (os.cpu_count() or 1)
    for name, cpu_s in after.processes.items():
        if name in before.processes and wall > 0:
            out[name] = (cpu_s - before.processes[name]) / wall
    return out
