"""Worker heartbeats in Redis: who is alive, with which model. One key per worker, holding its
:class:`~shared.contract.heartbeat.WorkerBeat` as JSON and expiring unless beaten again."""

from __future__ import annotations

from typing import Any

from redis import Redis

from shared.contract.heartbeat import WorkerBeat
from shared.redis_io.keys import RedisKeys


def beat(redis: Redis, keys: RedisKeys, *, name: str, info: WorkerBeat, ttl_s: float) -> None:
    redis.set(keys.worker(name), info.to_json(), px=int(ttl_s * 1000))


def live_beats(redis: Redis, keys: RedisKeys) -> list[WorkerBeat]:
    """Every live worker's heartbeat, by name."""
    found = []
    for key in redis.scan_iter(match=keys.workers_pattern(), count=100):
        raw = redis.get(key)
        if raw is not None:
            found.append(WorkerBeat.from_json(raw))
    return sorted(found, key=lambda w: w.label)


def live_workers(redis: Redis, keys: RedisKeys) -> list[dict[str, Any]]:
    """The same records as JSON objects, as they were written (what /readyz lists)."""
    return [w.to_dict() for w in live_beats(redis, keys)]


def forget(redis: Redis, keys: RedisKeys, *, name: str) -> None:
    redis.delete(keys.worker(name))
