"""The dialogue files ``parley say`` and ``parley render`` read (``parley.dialogue``): lines,
speakers and continuations, and errors that name the line."""

from __future__ import annotations

import pytest

from parley.dialogue import DialogueError, Line, parse_dialogue

DIALOGUE = """# a short scene
A: Did you hear that?
B: Hear what? I was
   in the other room.

A: Never mind.
"""


def test_dialogue_lines_speakers_and_continuations() -> None:
    assert parse_dialogue(DIALOGUE) == [
        Line(0, "Did you hear that?", 2),
        Line(1, "Hear what? I was in the other room.", 3),
        Line(0, "Never mind.", 6),
    ]
    assert [t.speaker for t in parse_dialogue("a: x\nZ: y\n3: z\n")] == [0, 25, 3]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("\n# intro\nHello without a speaker.\nA: hi", "line 3: expected 'A: text'"),
        ("A: fine\nB:   \n", "line 2: speaker B says nothing"),
        ("# only comments\n\n", "no lines"),
    ],
)
def test_dialogue_errors_name_the_line(text: str, names: str) -> None:
    with pytest.raises(DialogueError, match=names):
        parse_dialogue(text)
