"""What ``PARLEY_REDIS_URL`` names, parsed once, and every Redis client Parley makes from it.

Two forms:

- a plain Redis URL, ``redis://``, ``rediss://`` or ``unix://``, used as redis-py reads it;
- Redis Sentinel, ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``:
  the sentinels are asked for the current primary of ``SERVICE``, and every client follows it
  through a failover. The password (and user) are the Redis servers'; the sentinels are reached
  without one. A host without a port is on the sentinel port, 26379.

The sync and async clients, the broker's URL and transport options, and ``parley up``'s "does
Redis answer" all come from here, so each form works everywhere Parley keeps something in Redis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import parse_url
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SENTINEL_FORM = f"{SENTINEL_SCHEME}://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]"
PLAIN_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisUrl:
    """A parsed ``PARLEY_REDIS_URL``: a plain Redis URL (``sentinels`` empty), or Sentinel."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0].lower()

    @property
    def redacted(self) -> str:
        """The URL for logs: any password replaced by ``***``."""
        return redact(self.url)

    def client(
        self, *, socket_timeout: float | None = None, socket_connect_timeout: float | None = None
    ) -> Redis:
        """A sync client; on Sentinel, one on the current primary (it follows a failover).
        ``close()`` also closes its connections to the sentinels."""
        if not self.is_sentinel:
            return Redis.from_url(
                self.url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
            )
        sentinel = Sentinel(
            list(self.sentinels),
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
        )
        client: Redis = sentinel.master_for(
            self.service, redis_class=_SentinelPrimary, **self._primary_kwargs()
        )
        return client

    def async_client(
        self, *, socket_timeout: float | None = None, socket_connect_timeout: float | None = None
    ) -> AsyncRedis:
        """An asyncio client, like :meth:`client`; ``aclose()`` closes the sentinels' too."""
        if not self.is_sentinel:
            return AsyncRedis.from_url(
                self.url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
            )
        sentinel = AsyncSentinel(
            list(self.sentinels),
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
        )
        client: AsyncRedis = sentinel.master_for(
            self.service, redis_class=_AsyncSentinelPrimary, **self._primary_kwargs()
        )
        return client

    def _primary_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    @property
    def broker_url(self) -> str:
        """The URL for Celery/kombu: the URL itself, or kombu's Sentinel form
        (``sentinel://H1:P1/DB;sentinel://H2:P2/DB``, credentials on each)."""
        if not self.is_sentinel:
            return self.url
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(
            f"sentinel://{auth}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels
        )

    @property
    def broker_transport_options(self) -> dict[str, Any]:
        """What kombu's transport needs beyond Parley's own options: the Sentinel service."""
        return {"master_name": self.service} if self.is_sentinel else {}


class _SentinelPrimary(Redis):
    """A client on a Sentinel-managed primary that also closes its sentinel connections."""

    def close(self) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        try:
            super().close()
        finally:
            if manager is not None:
                manager.close()


class _AsyncSentinelPrimary(AsyncRedis):
    """The asyncio :class:`_SentinelPrimary`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        try:
            await super().aclose(close_connection_pool)
        finally:
            if manager is not None:
                await manager.aclose()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redact(url: str) -> str:
    """``url`` with the password of its credentials (if any) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}{slash}{path}"


@functools.lru_cache(maxsize=32)
def parse_redis_url(url: str) -> RedisUrl:
    """Parse ``PARLEY_REDIS_URL``; a ValueError says what is wrong (never with the password)."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*PLAIN_SCHEMES, SENTINEL_SCHEME):
        raise ValueError(
            f"Redis URL {redact(url)!r} must start with redis://, rediss://, unix:// or "
            f"{SENTINEL_SCHEME}:// (Sentinel: {SENTINEL_FORM})"
        )
    if scheme != SENTINEL_SCHEME:
        try:
            parse_url(url)  # what redis-py itself would reject when connecting
        except ValueError as exc:
            raise ValueError(f"Redis URL {redact(url)!r}: {exc}") from None
        return RedisUrl(url=url)
    return _parse_sentinel(url, rest)


def _parse_sentinel(url: str, rest: str) -> RedisUrl:
    def bad(problem: str) -> ValueError:
        return ValueError(f"Sentinel URL {redact(url)!r}: {problem}; expected {SENTINEL_FORM}")

    if "?" in rest or "#" in rest:
        raise bad("query parameters and fragments are not supported")
    netloc, _, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise bad("no sentinel host")
    sentinels = tuple(_sentinel_address(part, bad) for part in hosts.split(","))
    segments = path.split("/") if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise bad("no service name (the name the sentinels monitor the primary under)")
    if len(segments) > 2:
        raise bad(f"unexpected path after the database: /{'/'.join(segments[2:])}")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise bad(f"database {segments[1]!r} is not a number")
        db = int(segments[1])
    return RedisUrl(
        url=url,
        sentinels=sentinels,
        service=unquote(segments[0]),
        db=db,
        username=username,
        password=password,
    )


def _sentinel_address(part: str, bad: Any) -> tuple[str, int]:
    part = part.strip()
    if not part:
        raise bad("an empty sentinel address (two commas in a row, or a trailing comma)")
    if part.startswith("["):  # [IPv6]:port
        host, close, tail = part[1:].partition("]")
        if not close or not host or (tail and not tail.startswith(":")):
            raise bad(f"sentinel address {part!r} is not [IPv6] or [IPv6]:PORT")
        port_text = tail[1:] if tail else ""
    else:
        if part.count(":") > 1:
            raise bad(f"sentinel address {part!r}: write an IPv6 host as [HOST]:PORT")
        host, colon, port_text = part.partition(":")
        if not host:
            raise bad(f"sentinel address {part!r} has no host")
        if colon and not port_text:
            raise bad(f"sentinel address {part!r} has an empty port")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"sentinel port {port_text!r} of {part!r} is not a port number (1-65535)")
    return host, int(port_text)
