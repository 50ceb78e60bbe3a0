"""A worker process's CPU time, whole and by thread, from Linux ``/proc`` (None elsewhere).

The worker names its threads (``worker.thread_names``): the frame loop is ``parley-frames``
and Celery's task threads are ``pool-…``; torch's OpenMP helpers carry the name of the thread
that started them. :func:`split` turns two readings into CPU seconds for the frame loop, the
task threads and the rest (main thread, heartbeat, recovery, and threads that have ended: the
process's own total counts them, a thread's line no longer does).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.cpu import PROC, TICK_S

FRAME_LOOP_THREAD = "parley-frames"
TASK_THREAD_PREFIX = "pool-"


@dataclass(frozen=True)
class ProcessCpu:
    total_s: float  # user + system, every thread the process ever ran
    threads: dict[int, tuple[str, float]]  # live thread id → (OS name, CPU s)


def _stat_cpu_s(stat: str) -> tuple[str, float]:
    """(comm, user + system CPU seconds) from a ``stat`` line."""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3, "state"
    return comm, (int(fields[11]) + int(fields[12])) * TICK_S


def read(pid: int) -> ProcessCpu | None:
    """The process's CPU now, or None when it (or /proc) is not there."""
    base = PROC / str(pid)
    try:
        _, total = _stat_cpu_s((base / "stat").read_text())
    except OSError:
        return None
    threads: dict[int, tuple[str, float]] = {}
    for task in (base / "task").iterdir():
        try:
            threads[int(task.name)] = _stat_cpu_s((task / "stat").read_text())
        except (OSError, ValueError):  # the thread ended while we looked
            continue
    return ProcessCpu(total, threads)


def _role(comm: str) -> str:
    if comm == FRAME_LOOP_THREAD:
        return "frame_loop"
    return "task_threads" if comm.startswith(TASK_THREAD_PREFIX) else "rest"


def split(before: ProcessCpu, after: ProcessCpu) -> dict[str, float]:
    """CPU seconds between two readings: ``total``, ``frame_loop``, ``task_threads`` and
    ``rest`` (the total less the other two)."""
    out = {"total": after.total_s - before.total_s, "frame_loop": 0.0, "task_threads": 0.0}
    for tid, (comm, cpu_s) in after.threads.items():
        role = _role(comm)
        if role != "rest":
            out[role] += cpu_s - before.threads.get(tid, (comm, 0.0))[1]
    # Each thread's time is whole ticks, cut apart from the total's: keep the rest from going
    # a tick below zero.
    out["rest"] = max(0.0, out["total"] - out["frame_loop"] - out["task_threads"])
    return out
