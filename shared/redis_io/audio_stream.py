"""A generated turn's audio while it is made: one Redis Stream per job.

Entries, oldest first:

- ``{"pcm": bytes, "at": offset}``: a chunk of audio (one or more Mimi frames, 80 ms each), raw
  16-bit little-endian mono PCM at 24 kHz, exactly the samples the turn's stored audio will hold
  from byte ``at`` on;
- ``{"segment": index, "text", "frames", "status", "at": offset}``: a segment of the turn has
  ended (a long turn is spoken as segments, ``shared.sentences``), its audio ending at ``at``;
- ``{"end": "succeeded" | "failed" | "cancelled", "bytes": total}``: the terminal entry, written
  once the job's outcome is committed to SQL (readers stop at the first one); ``bytes`` (when the
  worker wrote it) is the stored audio's PCM length.

If Redis loses entries (a restart without persistence mid-turn), a reader sees a chunk that does
not start where the last one ended: it keeps what it had (a prefix of the stored audio), takes
no more chunks, and its listener is completed from SQL once the turn is stored.

The worker only appends (XADD, pipelined with its per-frame progress), so a slow or vanished
listener can never hold it back. The stream is capped (MAXLEN of at least the most frames a turn
can have, plus a margin) and expires: ``LIVE_TTL_S`` after each chunk, ``ENDED_TTL_S`` after the
end. Readers start from the first entry, so a late listener hears the turn from its start; once
the stream has expired, the stored audio in SQL is the same samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import RedisError

from shared.contract.segments import Segment, SegmentStatus
from shared.contract.stream import EntryKind, StreamEntry
from shared.contract.stream import Outcome as Outcome

log = logging.getLogger(__name__)

# The entries' fields (named by the contract, ``shared.contract.stream``).
PCM_FIELD = StreamEntry.PCM
AT_FIELD = StreamEntry.AT
END_FIELD = StreamEntry.END
BYTES_FIELD = StreamEntry.BYTES
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

    def add_chunk(self, pipe: Pipeline, pcm: bytes, *, at: int) -> None:
        """Queue one chunk of PCM, starting at byte ``at`` of the turn's audio, on the caller's
        pipeline (executed with its other commands)."""
        pipe.xadd(self.key, {PCM_FIELD: pcm, AT_FIELD: at}, maxlen=self.maxlen, approximate=True)
        pipe.expire(self.key, LIVE_TTL_S)

    def mark_segment(self, index: int, segment: Segment, *, at: int) -> None:
        """Append a segment's end (after its chunks, whose writes have been sent). Best effort:
        a Redis failure is logged; the turn's segments are stored with it."""
        fields = {
            StreamEntry.SEGMENT: index,
            StreamEntry.TEXT: segment.text.encode(),
            StreamEntry.FRAMES: segment.frames,
            StreamEntry.STATUS: segment.status.value.encode(),
            AT_FIELD: at,
        }
        try:
            self._redis.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        except RedisError as exc:
            log.warning("%s: segment %d's end not written: %s", self.key, index, exc)

    def end(self, outcome: Outcome, *, total_bytes: int | None = None) -> None:
        """Append the terminal entry; see :func:`end_stream`."""
        end_stream(self._redis, self.key, outcome, total_bytes=total_bytes)


def end_stream(redis: Redis, key: str, outcome: Outcome, *, total_bytes: int | None = None) -> None:
    """Append the terminal entry (creating the stream when no chunk came) and let the stream
    expire ``ENDED_TTL_S`` later. Best effort: a Redis failure is logged, never raised, since
    SQL already holds the outcome and listeners re-check it."""
    try:
        pipe = redis.pipeline(transaction=False)
        fields: dict[bytes, bytes | int] = {END_FIELD: outcome.encode()}
        if total_bytes is not None:
            fields[BYTES_FIELD] = total_bytes
        pipe.xadd(key, fields)  # type: ignore[arg-type]
        pipe.expire(key, ENDED_TTL_S)
        pipe.execute()
    except RedisError as exc:
        log.warning("could not end audio stream %s (%s): %s", key, outcome, exc)


@dataclass(frozen=True)
class StreamRead:
    """What one read gave: the PCM of the chunks read (joined; may be empty), the segment whose
    end came right after them (a read stops there), and the outcome once the terminal entry has
    been reached, with the stored audio's length when known."""

    pcm: bytes
    end: str | None
    total_bytes: int | None = None
    segment: SegmentMark | None = None


@dataclass(frozen=True)
class SegmentMark:
    """A segment's end as the stream tells it."""

    index: int
    segment: Segment


class AudioStreamReader:
    """The API's side: reads one job's stream from its first entry, in order, with blocking
    reads (no thread is held while it waits)."""

    def __init__(self, redis: AsyncRedis, key: str, *, count: int = 128) -> None:
        self._redis = redis
        self.key = key
        self._count = count
        self._last_id: bytes | str = "0-0"
        self.end: str | None = None
        self.total_bytes: int | None = None
        self.position = 0  # bytes of contiguous audio read so far
        self.gap = False  # entries were lost: no more chunks are taken

    async def read(self, *, block_ms: int) -> StreamRead:
        """The entries after the last one read, waiting up to ``block_ms`` for the first one.

        Empty when nothing came within ``block_ms`` (also while the stream does not exist yet).
        After the terminal entry it returns that outcome at once, without reading further.
        """
        if self.end is not None:
            return StreamRead(b"", self.end, self.total_bytes)
        reply: Any = await self._redis.xread(
            {self.key: self._last_id}, count=self._count, block=block_ms
        )
        chunks: list[bytes] = []
        for entry_id, fields in xread_entries(reply):
            self._last_id = entry_id
            kind = EntryKind.of(fields)
            if kind is EntryKind.END:
                self.end = bytes(fields[END_FIELD]).decode()
                if BYTES_FIELD in fields:
                    self.total_bytes = int(fields[BYTES_FIELD])
                break
            if kind is EntryKind.SEGMENT:
                return StreamRead(b"".join(chunks), None, segment=_segment_mark(fields))
            pcm = bytes(fields.get(PCM_FIELD, b""))
            at = int(fields[AT_FIELD]) if AT_FIELD in fields else self.position
            if self.gap or at != self.position:
                if not self.gap:
                    log.warning("%s: entries were lost at byte %d; taking no more", self.key, at)
                self.gap = True
                continue
            chunks.append(pcm)
            self.position += len(pcm)
        return StreamRead(b"".join(chunks), self.end, self.total_bytes)


def _segment_mark(fields: dict[bytes, bytes]) -> SegmentMark:
    segment = Segment(
        text=bytes(fields[StreamEntry.TEXT]).decode(),
        frames=int(fields[StreamEntry.FRAMES]),
        status=SegmentStatus(bytes(fields[StreamEntry.STATUS]).decode()),
    )
    return SegmentMark(index=int(fields[StreamEntry.SEGMENT]), segment=segment)


def xread_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
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
