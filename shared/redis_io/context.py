"""The context window: a conversation's newest turns with their Mimi codes, hot in Redis.

Redis holds, per conversation, one hash of the newest finished turns (text, speaker and codes).
SQL stays the truth: :meth:`ContextStore.candidates` asks SQL which turns precede the new one,
takes their codes from Redis, and rebuilds whatever Redis lacks from SQL (writing it back).
Audio is never re-encoded: codes are stored once, when a turn enters or is generated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.contract.segments import Segment, segments_from_json
from shared.db.models import JobStatus, Turn, TurnMedia
from shared.mimi_codes import codes_from_bytes, codes_to_bytes

log = logging.getLogger(__name__)

CONTEXT_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class ContextEntry:
    """One finished turn as a prompt needs it. A turn spoken in segments lists the spoken
    ones, ``(text, frames)`` in order: its codes are theirs back to back."""

    turn_id: str
    index: int
    speaker: int
    text: str
    codes: np.ndarray  # (frames, n_q)
    segments: tuple[tuple[str, int], ...] = ()

    def pieces(self) -> list[tuple[str, np.ndarray]]:
        """The turn as the prompt takes it, oldest first: one ``(text, codes)`` per spoken
        segment (so a long turn's newest segments can fit where the whole would not), or the
        whole turn."""
        if not self.segments or sum(f for _, f in self.segments) != self.codes.shape[0]:
            return [(self.text, self.codes)]
        pieces, at = [], 0
        for text, frames in self.segments:
            pieces.append((text, self.codes[at : at + frames]))
            at += frames
        return pieces

    def to_bytes(self) -> bytes:
        header = {
            "turn_id": self.turn_id,
            "index": self.index,
            "speaker": self.speaker,
            "text": self.text,
            "n_q": int(self.codes.shape[1]),
            "segments": [list(segment) for segment in self.segments],
        }
        return json.dumps(header).encode() + b"\n" + codes_to_bytes(self.codes)

    @classmethod
    def from_bytes(cls, data: bytes) -> ContextEntry:
        head, _, body = data.partition(b"\n")
        meta = json.loads(head)
        return cls(
            turn_id=meta["turn_id"],
            index=meta["index"],
            speaker=meta["speaker"],
            text=meta["text"],
            codes=codes_from_bytes(body, meta["n_q"]),
            segments=tuple((text, frames) for text, frames in meta.get("segments", [])),
        )


def _field(index: int) -> str:
    return f"{index:010d}"


class ContextStore:
    """Per-conversation context entries in Redis, rebuilt from SQL on a miss."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, conversation_id: str) -> str:
        return f"{self.prefix}:ctx:{conversation_id}"

    def put(self, conversation_id: str, entry: ContextEntry, *, keep: int) -> None:
        """Add a finished turn; keep only the ``keep`` newest entries. Best effort: the cache
        is rebuilt from SQL on a miss, so a Redis failure is logged, never raised."""
        key = self.key(conversation_id)
        try:
            pipe = self.redis.pipeline()
            pipe.hset(key, _field(entry.index), entry.to_bytes())
            pipe.expire(key, CONTEXT_TTL_S)
            pipe.hkeys(key)
            fields = pipe.execute()[-1]
            stale = sorted(fields)[: max(0, len(fields) - max(keep, 1))]
            if stale:
                self.redis.hdel(key, *stale)
        except RedisError as exc:
            log.warning("context cache of %s not updated: %s", conversation_id, exc)

    def delete(self, conversation_id: str) -> None:
        """Drop the cached window (best effort: it expires by itself)."""
        try:
            self.redis.delete(self.key(conversation_id))
        except RedisError as exc:
            log.warning("context cache of %s not dropped: %s", conversation_id, exc)

    def cached_indices(self, conversation_id: str) -> list[int]:
        return sorted(int(f) for f in self.redis.hkeys(self.key(conversation_id)))

    def candidates(
        self, session: Session, conversation_id: str, *, before_index: int, limit: int
    ) -> list[ContextEntry]:
        """The up to ``limit`` newest finished turns before ``before_index``, newest first."""
        if limit <= 0:
            return []
        rows: list[tuple[str, int, int, str, Any]] = [
            (r[0], r[1], r[2], r[3], r[4])
            for r in session.execute(
                select(Turn.id, Turn.index, Turn.speaker, Turn.text, Turn.segments)
                .where(
                    Turn.conversation_id == conversation_id,
                    Turn.index < before_index,
                    Turn.status == JobStatus.SUCCEEDED,
                )
                .order_by(Turn.index.desc())
                .limit(limit)
            )
        ]
        if not rows:
            return []
        key = self.key(conversation_id)
        try:
            cached: list[bytes | None] = self.redis.hmget(key, [_field(r[1]) for r in rows])  # type: ignore[assignment]
        except RedisError as exc:  # Redis away: SQL holds every turn's codes
            log.warning("context cache of %s unreadable (%s); using SQL", conversation_id, exc)
            cached = [None] * len(rows)
        entries: dict[str, ContextEntry] = {}
        for (turn_id, *_), blob in zip(rows, cached, strict=True):
            if blob is not None:
                entry = ContextEntry.from_bytes(blob)
                if entry.turn_id == turn_id:
                    entries[turn_id] = entry
        missing = [r for r in rows if r[0] not in entries]
        if missing:
            media = {
                m.turn_id: m
                for m in session.scalars(
                    select(TurnMedia).where(TurnMedia.turn_id.in_([r[0] for r in missing]))
                )
            }
            for turn_id, index, speaker, text, segments in missing:
                m = media.get(turn_id)
                if m is None or m.codes is None or m.n_q is None:
                    continue  # a finished turn always has codes; skip rather than fail a turn
                entry = ContextEntry(
                    turn_id=turn_id,
                    index=index,
                    speaker=speaker,
                    text=text,
                    codes=codes_from_bytes(m.codes, m.n_q),
                    segments=spoken_segments(segments_from_json(segments)),
                )
                entries[turn_id] = entry
                self.put(conversation_id, entry, keep=limit)
        return [entries[r[0]] for r in rows if r[0] in entries]


def spoken_segments(segments: Iterable[Segment]) -> tuple[tuple[str, int], ...]:
    """A turn's spoken segments as context takes them: ``(text, frames)`` of those with audio,
    in order."""
    return tuple((s.text, s.frames) for s in segments if s.spoken)


def select_window(costs_newest_first: Sequence[int], *, budget: int) -> int:
    """How many of the newest turns fit in ``budget`` positions, whole and contiguous.

    Turns are taken newest first; the first that does not fit ends the window, so what is left
    out is always the oldest part of the conversation, never a turn cut in half.
    """
    used = 0
    for count, cost in enumerate(costs_newest_first):
        if used + cost > budget:
            return count
        used += cost
    return len(costs_newest_first)
