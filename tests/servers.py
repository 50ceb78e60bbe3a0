"""Servers of a test's own, which the test may kill and start again (never the machine's
shared Redis or PostgreSQL)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from shared.redis_io.server import start_redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of the test's own, which the test may kill and start again: empty, or,
    with ``persist``, with every write it acknowledged (same port, same directory)."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persist = persist
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_redis(self.port, workdir=self.workdir, persist=self.persist)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
