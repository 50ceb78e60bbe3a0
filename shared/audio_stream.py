"""A generated turn's audio while it is made: one Redis Stream per job.

Entries, oldest first:

- ``{"pcm": bytes}``: a chunk of audio (one Mimi frame, 80 ms), raw 16-bit little-endian mono
  PCM at 24 kHz, exactly the samples the turn's stored audio will hold;
- ``{"end": "succeeded" | "failed" | "cancelled"}``: the terminal entry, written once the job's
  outcome is committed to SQL (readers stop at the first one).

The worker only appends (XADD, pipelined with its per-frame progress), so a slow or vanished
listener can never hold it back. The stream is capped (MAXLEN of at least the most frames a turn
can have, plus a margin) and expires: ``LIVE_TTL_S`` after each chunk, ``ENDED_TTL_S`` after the
end. Readers start from the first entry, so a late listener hears the turn from its start; once
the stream has expired, the stored audio in SQL is the same samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "cancelled"]

PCM_FIELD = b"pcm"
END_FIELD = b"end"
LIVE_TTL_S = 3600  # refreshed by every chunk, so a stream outlives any turn being generated
ENDED_TTL_S = 300  # long enough for listeners to drain; later ones get the stored audio
MAXLEN_MARGIN = 16  # room for end entries (a cancel may write one beside the worker's)


def stream_maxlen(max_frames: int) -> int:
    """The stream's cap for turns of at most ``max_frames`` frames: never trims a turn."""
    return max_frames + MAXLEN_MARGIN


class AudioStreamWriter:
    """The worker's side: appends one job's chunks and, at the end, its outcome."""

    def __init__(self, redis: Redis, key: str, *, maxlen: int) -> None:
        self._redis = redis
        self.key = key
        self.maxlen = maxlen

    def add_chunk(self, pipe: Pipeline, pcm: bytes) -> None:
        """Queue one chunk of PCM on the caller's pipeline (executed with its other commands)."""
        pipe.xadd(self.key, {PCM_FIELD: pcm}, maxlen=self.maxlen, approximate=True)
        pipe.expire(self.key, LIVE_TTL_S)

    def end(self, outcome: Outcome) -> None:
        """Append the terminal entry; see :func:`end_stream`."""
        end_stream(self._redis, self.key, outcome)


def end_stream(redis: Redis, key: str, outcome: Outcome) -> None:
    """Append the terminal entry (creating the stream when no chunk came) and let the stream
    expire ``ENDED_TTL_S`` later. Best effort: a Redis failure is logged, never raised, since
    SQL already holds the outcome and listeners re-check it."""
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.xadd(key, {END_FIELD: outcome.encode()})
        pipe.expire(key, ENDED_TTL_S)
        pipe.execute()
    except RedisError as exc:
        log.warning("could not end audio stream %s (%s): %s", key, outcome, exc)


@dataclass(frozen=True)
class StreamRead:
    """What one read gave: the PCM of the chunks read (joined; may be empty), and the outcome
    once the terminal entry has been reached."""

    pcm: bytes
    end: str | None


class AudioStreamReader:
    """The API's side: reads one job's stream from its first entry, in order, with blocking
    reads (no thread is held while it waits)."""

    def __init__(self, redis: AsyncRedis, key: str, *, count: int = 128) -> None:
        self._redis = redis
        self.key = key
        self._count = count
        self._last_id: bytes | str = "0-0"
        self.end: str | None = None

    async def read(self, *, block_ms: int) -> StreamRead:
        """The entries after the last one read, waiting up to ``block_ms`` for the first one.

        Empty when nothing came within ``block_ms`` (also while the stream does not exist yet).
        After the terminal entry it returns that outcome at once, without reading further.
        """
        if self.end is not None:
            return StreamRead(b"", self.end)
        reply: Any = await self._redis.xread(
            {self.key: self._last_id}, count=self._count, block=block_ms
        )
        chunks: list[bytes] = []
        for entry_id, fields in _entries(reply):
            self._last_id = entry_id
            if END_FIELD in fields:
                self.end = bytes(fields[END_FIELD]).decode()
                break
            chunks.append(bytes(fields.get(PCM_FIELD, b"")))
        return StreamRead(b"".join(chunks), self.end)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's entries for one stream, in RESP2 (list of pairs) or RESP3 (map) shape."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    found: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entries in streams:
        if entries and isinstance(entries[0], list) and len(entries) == 1:
            entries = entries[0]  # RESP3 nests the entry list one level deeper
        found.extend((entry_id, fields) for entry_id, fields in entries)
    return found
