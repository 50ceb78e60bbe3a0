"""A turn's audio stream in Redis (``shared.redis_io.audio_stream``), on a Redis server of the
test's own: chunks carry their byte offset, and after lost entries a reader keeps the prefix it
has and takes no further chunk. The whole run with Redis restarted empty:
tests/integration/test_redis_loss.py."""

from __future__ import annotations

from typing import Any

from redis import Redis

from shared.redis_io.audio_stream import AudioStreamReader
from tests.servers import OwnRedis


def test_a_reader_takes_no_chunk_after_lost_entries(own_redis: OwnRedis) -> None:
    """Chunks carry their byte offset: after a gap the reader keeps its prefix and stops."""
    import asyncio

    from redis.asyncio import Redis as AsyncRedis

    from shared.redis_io.audio_stream import AudioStreamWriter, end_stream

    sync = Redis.from_url(own_redis.url)
    writer = AudioStreamWriter(sync, "t:job:1:audio", maxlen=100)

    def add(at: int, pcm: bytes) -> None:
        pipe = sync.pipeline()
        writer.add_chunk(pipe, pcm, at=at)
        pipe.execute()

    add(0, b"ab")
    add(2, b"cd")

    async def read_all() -> tuple[bytes, Any]:
        client = AsyncRedis.from_url(own_redis.url)
        reader = AudioStreamReader(client, "t:job:1:audio")
        got = await reader.read(block_ms=100)
        first = got.pcm
        sync.delete("t:job:1:audio")  # Redis lost the stream; the worker goes on
        add(6, b"gh")  # bytes 4..5 were never seen by the new stream
        end_stream(sync, "t:job:1:audio", "succeeded", total_bytes=8)
        rest = await reader.read(block_ms=100)
        await client.aclose()
        return first + rest.pcm, (reader.gap, rest.end, rest.total_bytes)

    body, (gap, end, total) = asyncio.run(read_all())
    sync.close()
    assert body == b"abcd"  # a prefix of the turn; the listener is completed from SQL
    assert (gap, end, total) == (True, "succeeded", 8)


def test_a_read_stops_at_each_segment_mark(own_redis: OwnRedis) -> None:
    """A segment's mark follows its chunks; a read returns the audio before it with the mark,
    so a listener can say a segment has ended right after its last sample."""
    import asyncio

    from redis.asyncio import Redis as AsyncRedis

    from shared.contract.segments import Segment, SegmentStatus
    from shared.redis_io.audio_stream import AudioStreamWriter, end_stream

    sync = Redis.from_url(own_redis.url)
    key = "t:job:2:audio"
    writer = AudioStreamWriter(sync, key, maxlen=100)
    at = 0
    for index, (text, chunks) in enumerate([("One.", [b"aa", b"bb"]), ("Two.", [b"cc"])]):
        for chunk in chunks:
            pipe = sync.pipeline()
            writer.add_chunk(pipe, chunk, at=at)
            pipe.execute()
            at += len(chunk)
        writer.mark_segment(index, Segment(text, len(chunks), SegmentStatus.DONE), at=at)
    end_stream(sync, key, "succeeded", total_bytes=at)

    async def read_all() -> list[tuple[bytes, Any, Any]]:
        client = AsyncRedis.from_url(own_redis.url)
        reader = AudioStreamReader(client, key)
        reads = []
        while reader.end is None:
            got = await reader.read(block_ms=100)
            mark = None if got.segment is None else (got.segment.index, got.segment.segment)
            reads.append((got.pcm, mark, got.end))
        await client.aclose()
        return reads

    reads = asyncio.run(read_all())
    sync.close()
    assert reads == [
        (b"aabb", (0, Segment("One.", 2, SegmentStatus.DONE)), None),
        (b"cc", (1, Segment("Two.", 1, SegmentStatus.DONE)), None),
        (b"", None, "succeeded"),
    ]
