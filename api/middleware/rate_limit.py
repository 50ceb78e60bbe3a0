"""Requests per key per minute, counted in Redis; and the middleware that reports the count.

A fixed window per owner: the owner's first request opens a 60-second window (a Redis key with
that expiry), and every request in it adds one, in one MULTI/EXEC (``SET NX EX``, ``INCR``,
``PTTL``), so concurrent API processes share one exact count. Past the limit a request is
refused until the window's key expires, which is its ``Retry-After``. As with any fixed window,
the two sides of a window's end may together see up to twice the limit within 60 seconds.

Redis away must not take the API down: the request passes, a warning is logged, and the limiter
leaves Redis alone for a few seconds (so a Redis that hangs costs no request its timeout, and
the log says it once per pause).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.redis_io.keys import RedisKeys

log = logging.getLogger(__name__)

WINDOW_S = 60
REDIS_PAUSE_S = 5.0  # after Redis failed, requests pass unlimited for this long
SCOPE_KEY = "parley.rate_limit"  # where the dependency leaves its verdict for the headers


@dataclass(frozen=True)
class RateVerdict:
    limit: int
    count: int  # this request included
    reset_s: int  # seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)


class RateLimiter:
    def __init__(self, redis: Redis, keys: RedisKeys, *, per_minute: int) -> None:
        self.redis = redis
        self.keys = keys
        self.per_minute = per_minute
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def hit(self, owner: str) -> RateVerdict | None:
        """Count one request of ``owner``; None when nothing was counted (the limiter is off,
        or Redis is away)."""
        if self.per_minute == 0 or time.monotonic() < self._paused_until:
            return None
        key = self.keys.rate_limit(owner)
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(key, 0, ex=WINDOW_S, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, ttl_ms = pipe.execute()
        except (RedisError, OSError) as exc:
            with self._lock:  # one warning per pause, however many requests failed at once
                report = time.monotonic() >= self._paused_until
                self._paused_until = time.monotonic() + REDIS_PAUSE_S
            if report:
                log.warning(
                    "rate limiter: Redis is unreachable (%s); requests pass unlimited for the "
                    "next %.0f s",
                    exc,
                    REDIS_PAUSE_S,
                )
            return None
        reset_s = max(1, math.ceil(ttl_ms / 1000)) if ttl_ms > 0 else WINDOW_S
        return RateVerdict(limit=self.per_minute, count=int(count), reset_s=reset_s)


class RateLimitHeaders:
    """Adds ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` to a response whose request
    the limiter counted (any status, streams included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            verdict = scope.get(SCOPE_KEY)
            if message["type"] == "http.response.start" and isinstance(verdict, RateVerdict):
                headers = MutableHeaders(scope=message)
                headers["X-RateLimit-Limit"] = str(verdict.limit)
                headers["X-RateLimit-Remaining"] = str(verdict.remaining)
                headers["X-RateLimit-Reset"] = str(verdict.reset_s)
            await send(message)

        await self.app(scope, receive, send_with_headers)
