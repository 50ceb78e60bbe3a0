"""Worker heartbeats in Redis: who is alive, with which model."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from shared.redis_io.keys import RedisKeys


def beat(redis: Redis, keys: RedisKeys, *, name: str, info: dict[str, Any], ttl_s: float) -> None:
    redis.set(keys.worker(name), json.dumps(info), px=int(ttl_s * 1000))


def live_workers(redis: Redis, keys: RedisKeys) -> list[dict[str, Any]]:
    found = []
    for key in redis.scan_iter(match=keys.workers_pattern(), count=100):
        raw = redis.get(key)
        if raw is not None:
            found.append(json.loads(raw))
    return sorted(found, key=lambda w: str(w.get("name")))


def forget(redis: Redis, keys: RedisKeys, *, name: str) -> None:
    redis.delete(keys.worker(name))
