"""A live turn's text on its way to the worker: one Redis Stream per job.

The API appends each segment of text as soon as its sentence is complete (``{"text": ...}``)
and, when the client ends the turn, an end entry (``{"end": "1"}``); an interrupt ends it too,
and so does the worker when it stops waiting (no text for ``live_text_idle_s``). Text is only
appended while the stream has no end (:func:`append_text`, atomic in Redis), so text that comes
too late is refused, never lost unseen. The worker reads the stream from its first entry, so an
attempt that recovery started again reads the same text. Entries expire with the stream
(``TEXT_TTL_S`` after the last one).
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


# Appends ARGV[3:] as text entries (then an end when ARGV[1] is "1"; ARGV[2] is the TTL) unless
# the stream already ends; returns 0 when it does (nothing is appended), else 1.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'end' then return 0 end
  end
end
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'text', ARGV[i]) end
if ARGV[1] == '1' then redis.call('XADD', KEYS[1], '*', 'end', '1') end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def append_text(redis: Redis, key: str, texts: list[str], *, end: bool = False) -> bool:
    """Append the segments (and the end, when ``end``) unless the text has ended already;
    False when it had (nothing is appended)."""
    if not texts and not end:
        return True
    return bool(redis.eval(_APPEND, 1, key, "1" if end else "0", TEXT_TTL_S, *texts))


def end_text(pipe: Pipeline | Redis, key: str) -> None:
    """End the text (idempotent for readers: they stop at the first end)."""
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
