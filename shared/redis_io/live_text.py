"""A live turn's text on its way to the worker: one Redis Stream per job.

The API appends each segment of text as soon as its sentence is complete (``{"text": ...}``)
and, when the client ends the turn, an end entry (``{"end": "1"}``). The worker reads the
stream from its first entry, so an attempt that recovery started again reads the same text.
Entries expire with the stream (``TEXT_TTL_S`` after the last one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from redis import Redis
from redis.client import Pipeline

from shared.redis_io.audio_stream import xread_entries

TEXT_FIELD = b"text"
END_FIELD = b"end"
TEXT_TTL_S = 3600
POLL_MS = 200  # how long one read waits before the worker checks whether to stop


def add_segments(pipe: Pipeline, key: str, texts: list[str], *, end: bool = False) -> None:
    """Queue the segments (and the end, when ``end``) on the caller's pipeline."""
    for text in texts:
        pipe.xadd(key, {TEXT_FIELD: text.encode()})
    if end:
        pipe.xadd(key, {END_FIELD: b"1"})
    pipe.expire(key, TEXT_TTL_S)


class TextTimeout(Exception):
    """No text came for longer than the reader's idle limit."""


def read_segments(
    redis: Redis, key: str, *, stop: Callable[[], bool], idle_s: float
) -> Iterator[str]:
    """The segments as they come, until the end entry; stops early (returns) once ``stop()``
    says so, checked between reads. Raises :class:`TextTimeout` after ``idle_s`` seconds with
    nothing new."""
    last_id: bytes | str = "0-0"
    waited_ms = 0
    while True:
        if stop():
            return
        reply: Any = redis.xread({key: last_id}, count=64, block=POLL_MS)
        entries = xread_entries(reply)
        if not entries:
            waited_ms += POLL_MS
            if waited_ms >= idle_s * 1000:
                raise TextTimeout(f"no text came for {idle_s:g} s")
            continue
        waited_ms = 0
        for entry_id, fields in entries:
            last_id = entry_id
            if END_FIELD in fields:
                return
            yield bytes(fields[TEXT_FIELD]).decode()
