"""OS names for a worker's Python threads, so ``/proc``, ``top -H`` and profilers tell them apart.

Python 3.11 leaves every thread's OS name as the process's (``python``). After
:func:`name_os_threads`, each ``threading.Thread`` started in the process names its OS thread
after itself as it starts: the frame loop's ``parley-frames``, ``parley-heartbeat``, and the
Celery pool's task threads (``ThreadPoolExecutor-0_3`` becomes ``pool-0_3``: Linux keeps 15
bytes). Threads started outside Python by a named thread (torch's OpenMP workers) inherit its
name, so their CPU counts with it. ``make bench`` splits a worker's CPU by these names.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

OS_NAME_BYTES = 15  # Linux's limit (TASK_COMM_LEN - 1)
_SHORTER = {"ThreadPoolExecutor-": "pool-"}


def os_thread_name(python_name: str) -> str:
    """The OS name for a thread called ``python_name``: known long prefixes shortened, then cut
    to 15 bytes."""
    for long, short in _SHORTER.items():
        if python_name.startswith(long):
            python_name = short + python_name.removeprefix(long)
    return python_name.encode()[:OS_NAME_BYTES].decode(errors="ignore")


def name_this_thread() -> None:
    """Give the calling thread its OS name (no-op where there is no ``/proc``)."""
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    with contextlib.suppress(OSError):  # not Linux, or /proc read-only: names are a convenience
        comm.write_text(os_thread_name(threading.current_thread().name))


def _on_first_call(_frame: FrameType, _event: str, _arg: Any) -> None:
    sys.setprofile(None)  # once per thread, before its run(): no cost afterwards
    name_this_thread()


def name_os_threads() -> None:
    """Name every thread started from now on after its Python name. The main thread keeps the
    process's name (``ps``, ``pgrep`` and the like show that one)."""
    threading.setprofile(_on_first_call)
