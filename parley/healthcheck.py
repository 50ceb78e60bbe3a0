"""``parley healthcheck worker``: does a worker on this host beat and consume?

For a container's healthcheck (``docker-compose.yml``): a worker process can be alive and
still not serve (its broker consumer gone, its heartbeat thread stuck). Its heartbeat in Redis
says both, so this reads it: exit 0 when a worker named for this host has a live heartbeat that
says it consumes, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import argparse
import socket
import sys

from redis.exceptions import RedisError

from shared.redis_io.heartbeats import live_beats
from shared.redis_io.keys import RedisKeys
from shared.settings import Settings


def cmd_healthcheck(settings: Settings, _args: argparse.Namespace) -> int:
    host = socket.gethostname()
    try:
        client = settings.redis.client(socket_timeout=3, socket_connect_timeout=3)
        try:
            workers = live_beats(client, RedisKeys(settings.redis_prefix))
        finally:
            client.close()
    except RedisError as exc:
        print(f"unhealthy: Redis does not answer ({exc})", file=sys.stderr)
        return 1
    here = [w for w in workers if (w.name or "").endswith(f"@{host}")]
    if not here:
        print(f"unhealthy: no worker on {host} has a live heartbeat", file=sys.stderr)
        return 1
    if not any(w.consuming for w in here):
        print(f"unhealthy: the worker on {host} is not consuming from the broker", file=sys.stderr)
        return 1
    print(f"healthy: {', '.join(w.label for w in here if w.consuming)}")
    return 0


def add_healthcheck_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "healthcheck", help="exit 0 when a worker on this host beats and consumes (containers)"
    )
    check.add_argument("role", choices=["worker"])
    check.set_defaults(func=cmd_healthcheck)
