"""The entries of a job's audio stream (a Redis Stream the worker appends to and the API
reads): their field names, and the outcomes a terminal entry names.

- a chunk: ``{PCM: bytes, AT: offset}``;
- the end: ``{END: outcome, BYTES: total}`` (``BYTES`` only when the worker knows it).

See ``shared.redis_io.audio_stream`` for what they mean to the writer and the reader.
"""

from __future__ import annotations

from typing import Literal

Outcome = Literal["succeeded", "failed", "cancelled"]


class StreamEntry:
    """Field names of the stream's entries, as Redis returns them (bytes)."""

    PCM = b"pcm"  # a chunk's audio
    AT = b"at"  # a chunk's first byte in the turn's audio
    END = b"end"  # the terminal entry's outcome
    BYTES = b"bytes"  # the terminal entry's total length of the stored audio's PCM
