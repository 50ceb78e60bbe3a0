"""Dialogue files for ``parley render``: one turn per line, ``A: text`` (letters A-Z are speakers
0-25) or ``3: text`` (a speaker id). Blank lines and ``#`` comments are skipped; a line without
a speaker continues the previous turn's text."""

from __future__ import annotations

import re
from dataclasses import dataclass

LINE = re.compile(r"\s*(?P<who>[A-Za-z]|[0-9]{1,2})\s*:\s*(?P<text>.*)")


class DialogueError(ValueError):
    """A dialogue file that cannot be rendered; the message names the line."""


@dataclass(frozen=True)
class Line:
    speaker: int
    text: str
    number: int  # its first line in the file, for messages


def speaker_of(who: str) -> int:
    """``A`` → 0 … ``Z`` → 25 (any case); digits → that id."""
    return int(who) if who.isdigit() else ord(who.upper()) - ord("A")


def parse_dialogue(text: str) -> list[Line]:
    turns: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = LINE.fullmatch(raw)
        if match is None:
            if not turns:
                raise DialogueError(
                    f"line {number}: expected 'A: text' (a speaker letter or id, a colon, the "
                    f"text), got {stripped[:40]!r}"
                )
            last = turns[-1]
            turns[-1] = Line(last.speaker, f"{last.text} {stripped}", last.number)
            continue
        said = match["text"].strip()
        if not said:
            raise DialogueError(f"line {number}: speaker {match['who']} says nothing")
        turns.append(Line(speaker_of(match["who"]), said, number))
    if not turns:
        raise DialogueError("the dialogue has no lines (expected lines like 'A: Hello.')")
    return turns
