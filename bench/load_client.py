"""HTTP for the load test: a recorder of every response, and a client that honours 429.

Every request is labelled with its endpoint (``"GET /v1/jobs/{jid}"``), so errors and latencies
are reported per endpoint. A 429 is not an error: it is counted apart, and the request is sent
again after the response's ``Retry-After`` (each resend counted as a retry). A transport error
(connection refused or reset, timeout) is an error of its own kind and is never resent, so a
POST that may have been accepted is never posted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0


@dataclass
class Recorder:
    """What every request came to, by endpoint."""

    latencies_ms: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    retry_wait_s: float = 0.0
    requests: int = 0

    def response(self, endpoint: str, status: int, elapsed_ms: float) -> None:
        self.requests += 1
        self.statuses[(endpoint, str(status))] += 1
        if status < 400:
            self.latencies_ms[endpoint].append(elapsed_ms)

    def transport_error(self, endpoint: str, exc: Exception) -> None:
        self.requests += 1
        self.statuses[(endpoint, type(exc).__name__)] += 1

    def errors(self) -> dict[str, dict[str, int]]:
        """Endpoint → status (or exception name) → count, for everything but 2xx/3xx and 429."""
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (endpoint, status), n in sorted(self.statuses.items()):
            if status == "429" or (status.isdigit() and int(status) < 400):
                continue
            out[endpoint][status] = n
        return dict(out)

    def rate_limited(self) -> dict[str, int]:
        return {e: n for (e, status), n in sorted(self.statuses.items()) if status == "429"}


def retry_after_s(response: httpx.Response) -> float:
    """The response's ``Retry-After`` in seconds (delta or HTTP date), within sane bounds."""
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


@dataclass(frozen=True)
class Streamed:
    """A stream read to its end: status, time from ``since`` to the first byte, bytes read."""

    status: int
    first_byte_ms: float | None
    size: int


class LoadClient:
    """``httpx.AsyncClient`` calls that are recorded, with 429s waited out and resent."""

    def __init__(self, http: httpx.AsyncClient, recorder: Recorder, *, max_retries: int) -> None:
        self.http = http
        self.recorder = recorder
        self.max_retries = max_retries

    async def request(
        self, method: str, endpoint: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """The final response (a 429 only once retries are spent), or None after a transport
        error."""
        for attempt in range(self.max_retries + 1):
            began = time.perf_counter()
            try:
                response = await self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                self.recorder.transport_error(endpoint, exc)
                return None
            self.recorder.response(
                endpoint, response.status_code, 1000 * (time.perf_counter() - began)
            )
            if response.status_code != 429 or attempt == self.max_retries:
                return response
            await self._wait_retry(endpoint, response)
        raise AssertionError("unreachable")

    async def stream(self, endpoint: str, url: str, *, since: float) -> Streamed | None:
        """GET ``url`` and read the body to its end; ``since`` is a ``perf_counter`` time."""
        for attempt in range(self.max_retries + 1):
            began = time.perf_counter()
            first: float | None = None
            size = 0
            try:
                async with self.http.stream("GET", url) as response:
                    async for chunk in response.aiter_bytes():
                        if chunk and first is None:
                            first = time.perf_counter()
                        size += len(chunk)
            except httpx.TransportError as exc:
                self.recorder.transport_error(endpoint, exc)
                return None
            status = response.status_code
            self.recorder.response(endpoint, status, 1000 * (time.perf_counter() - began))
            if status != 429 or attempt == self.max_retries:
                first_ms = None if first is None else 1000 * (first - since)
                return Streamed(status=status, first_byte_ms=first_ms, size=size)
            await self._wait_retry(endpoint, response)
        raise AssertionError("unreachable")

    async def _wait_retry(self, endpoint: str, response: httpx.Response) -> None:
        wait = retry_after_s(response)
        self.recorder.retries[endpoint] += 1
        self.recorder.retry_wait_s += wait
        await asyncio.sleep(wait)
