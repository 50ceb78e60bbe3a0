"""A turn's text cut into segments CSM speaks one at a time, and each segment's audio budget.

CSM's prompt holds 2048 positions for the context, the text and the audio being made, so a long
turn is spoken as segments: sentences, a sentence too long for one segment cut at its clauses
(``,;:`` and dashes), and a clause still too long at its words. Each segment's audio budget
follows its text (:func:`segment_budget_ms`), never a fixed length.

Both sides use this module: the API splits a REST turn's text when it stores the turn (the turn
lists its segments from the start), and splits live text as it comes (:class:`SentenceBuffer`);
the worker speaks the segments it is given.
"""

from __future__ import annotations

import re

# Longest segment, in characters: about 15 s of ordinary speech, well inside the prompt.
MAX_SEGMENT_CHARS = 220
# A segment's budget: a floor, plus a generous allowance per character. Ordinary speech runs at
# 12-16 characters a second and slow, careful reading at about 10; 110 ms a character (9 a
# second) plus 2 s leaves room beyond both (tests/unit/test_sentences.py checks it on prose).
BUDGET_FLOOR_MS = 2000
BUDGET_MS_PER_CHAR = 110

# A sentence ends at . ! ? or … (with closing quotes or brackets after it), followed by space;
# a newline always ends one.
_CLOSERS = "[\"'”’)\\]]"
_SENTENCE_END = re.compile(
    rf"(?:(?<=[.!?…])|(?<=[.!?…]{_CLOSERS})|(?<=[.!?…]{_CLOSERS}{_CLOSERS}))\s+|\n+"
)
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")


def split_segments(text: str, *, max_chars: int = MAX_SEGMENT_CHARS) -> list[str]:
    """``text`` as segments of at most ``max_chars`` characters, in order; whitespace between
    them is dropped, and their words, joined with spaces, are the text's words."""
    segments: list[str] = []
    for sentence in _cut(text, _SENTENCE_END):
        segments.extend(_fit(sentence, max_chars))
    return segments


def segment_budget_ms(text: str, *, cap_ms: int) -> int:
    """The most audio a segment of ``text`` may take: generous for its length, at most
    ``cap_ms``."""
    return min(cap_ms, BUDGET_FLOOR_MS + BUDGET_MS_PER_CHAR * len(text))


class SentenceBuffer:
    """Live text in, complete segments out: :meth:`feed` text as it comes (an LLM's tokens)
    and get the segments whose sentence has ended; :meth:`flush` at the end of the turn for the
    rest. A sentence has ended once its end mark is followed by white space (or a newline
    came), so ``3.5`` or ``e.g.`` mid-token never ends one."""

    def __init__(self, *, max_chars: int = MAX_SEGMENT_CHARS) -> None:
        """An empty buffer cutting segments of at most ``max_chars`` characters."""
        self._max_chars = max_chars
        self._pending = ""

    @property
    def pending(self) -> str:
        """Text received that does not yet end a sentence."""
        return self._pending

    def feed(self, text: str) -> list[str]:
        """Add ``text``; the segments completed by it, in order (often none)."""
        self._pending += text
        last_end = None
        for match in _SENTENCE_END.finditer(self._pending):
            last_end = match
        done: list[str] = []
        if last_end is not None:
            complete, self._pending = (
                self._pending[: last_end.end()],
                self._pending[last_end.end() :],
            )
            done = split_segments(complete, max_chars=self._max_chars)
        # A sentence with no end yet but already too long: speak its complete clauses (or
        # words) now, keeping the text after the last boundary as it came.
        if len(self._pending) > self._max_chars:
            cut = _last_boundary(self._pending[: self._max_chars + 1])
            if cut is not None:
                done.extend(_fit(self._pending[:cut].strip(), self._max_chars))
                self._pending = self._pending[cut:]
        return done

    def flush(self) -> list[str]:
        """The segments of whatever text is left (the turn has ended)."""
        rest, self._pending = self._pending, ""
        return split_segments(rest, max_chars=self._max_chars)


def _last_boundary(text: str) -> int | None:
    """Where the text after the last clause boundary (else the last space) begins, if any."""
    for boundary in (_CLAUSE_END, re.compile(r"\s+")):
        ends = [m.end() for m in boundary.finditer(text) if m.start() > 0]
        if ends:
            return ends[-1]
    return None


def _cut(text: str, boundary: re.Pattern[str]) -> list[str]:
    parts = (part.strip() for part in boundary.split(text))
    return [part for part in parts if part]


def _fit(sentence: str, max_chars: int) -> list[str]:
    """A sentence as pieces of at most ``max_chars``: whole if it fits, else clauses packed
    together, else words packed together (a single longer word stands alone, cut)."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    for clause in _cut(sentence, _CLAUSE_END):
        if len(clause) <= max_chars:
            pieces.append(clause)
        else:
            pieces.extend(_pack(clause.split(), max_chars))
    return _pack(pieces, max_chars)


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Consecutive parts joined with spaces while they fit in ``max_chars``."""
    packed: list[str] = []
    for part in parts:
        while len(part) > max_chars:  # one word longer than a segment: cut it
            packed.append(part[:max_chars])
            part = part[max_chars:]
        if packed and len(packed[-1]) + 1 + len(part) <= max_chars:
            packed[-1] = f"{packed[-1]} {part}"
        else:
            packed.append(part)
    return [p for p in packed if p]
