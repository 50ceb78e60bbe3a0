"""The entries of a job's audio stream (a Redis Stream the worker appends to and the API
reads): their field names, and the outcomes a terminal entry names.

- a chunk: ``{PCM: bytes, AT: offset}``;
- a segment's end: ``{SEGMENT: index, TEXT: text, FRAMES: n, STATUS: status, AT: offset}`` (after
  the segment's last chunk; ``AT`` is where its audio ends);
- the end: ``{END: outcome, BYTES: total}`` (``BYTES`` only when the worker knows it).

See ``shared.redis_io.audio_stream`` for what they mean to the writer and the reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal

Outcome = Literal["succeeded", "failed", "cancelled"]


class StreamEntry:
    """Field names of the stream's entries, as Redis returns them (bytes)."""

    PCM = b"pcm"  # a chunk's audio
    AT = b"at"  # a chunk's first byte in the turn's audio
    END = b"end"  # the terminal entry's outcome
    BYTES = b"bytes"  # the terminal entry's total length of the stored audio's PCM
    SEGMENT = b"segment"  # a segment's end: its index in the turn
    TEXT = b"text"  # the segment's text
    FRAMES = b"frames"  # the frames it got
    STATUS = b"status"  # how it ended (``shared.contract.segments.SegmentStatus``)


class EntryKind(StrEnum):
    """What an entry is: a chunk of audio, a segment's end, or the terminal entry."""

    CHUNK = "chunk"
    SEGMENT = "segment"
    END = "end"

    @classmethod
    def of(cls, fields: Mapping[bytes, object]) -> EntryKind:
        """An entry with an ``END`` field is the end, one with a ``SEGMENT`` field a segment's
        end; any other is a chunk."""
        if StreamEntry.END in fields:
            return cls.END
        return cls.SEGMENT if StreamEntry.SEGMENT in fields else cls.CHUNK
