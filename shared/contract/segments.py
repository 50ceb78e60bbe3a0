"""A generated turn's segments as the turn stores them (``turns.segments``, a JSON list) and
its JSON shows them: each segment's text, the frames it got, and how it ended.

The API writes the list when it stores a REST turn (every segment ``pending``); a live turn's
list grows as its text comes. The worker rewrites it when it stores the turn, one entry per
segment, in order. A turn's codes are its segments' codes back to back, so the frames say where
each segment's codes begin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SegmentStatus(StrEnum):
    """How a segment ended."""

    PENDING = "pending"  # not spoken yet
    DONE = "done"  # the model ended it
    TRUNCATED = "truncated"  # it reached its audio budget (the model had not ended it)
    INTERRUPTED = "interrupted"  # the turn was interrupted while it was spoken
    DROPPED = "dropped"  # the turn was interrupted before it was spoken: it has no audio


@dataclass(frozen=True)
class Segment:
    """One segment of a turn."""

    text: str
    frames: int = 0
    status: SegmentStatus = SegmentStatus.PENDING

    @property
    def spoken(self) -> bool:
        """Whether it has audio (and so is context for later turns)."""
        return self.frames > 0

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "frames": self.frames, "status": self.status.value}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Segment:
        return cls(
            text=str(raw["text"]),
            frames=int(raw.get("frames", 0)),
            status=SegmentStatus(raw.get("status", SegmentStatus.PENDING)),
        )


def segments_to_json(segments: Iterable[Segment]) -> list[dict[str, Any]]:
    return [segment.to_json() for segment in segments]


def segments_from_json(raw: Iterable[Mapping[str, Any]] | None) -> list[Segment]:
    return [Segment.from_json(item) for item in raw or []]


def interrupted(segments: Iterable[Segment]) -> bool:
    """Whether an interrupt stopped the turn (a segment was cut, or never spoken)."""
    return any(s.status in (SegmentStatus.INTERRUPTED, SegmentStatus.DROPPED) for s in segments)


def truncated(segments: Iterable[Segment]) -> bool:
    """Whether some segment reached its audio budget before the model ended it."""
    return any(s.status is SegmentStatus.TRUNCATED for s in segments)


def pending(texts: Iterable[str]) -> list[Segment]:
    """Segments not yet spoken, one per text."""
    return [Segment(text) for text in texts]
