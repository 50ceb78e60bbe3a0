"""Cutting a turn's text into segments, live text as it comes, and each segment's budget."""

from __future__ import annotations

import random

import pytest

from shared.sentences import (
    MAX_SEGMENT_CHARS,
    SentenceBuffer,
    segment_budget_ms,
    split_segments,
)

# Ordinary prose of several shapes: short and long sentences, quotes, a list, dashes.
PROSE = (
    "The harbour was quiet that morning. Gulls circled the masts, and somewhere a radio played "
    "an old song about the sea. Mara walked the length of the pier twice before she noticed the "
    "boat was gone — not drifted, not sunk, simply gone, as if the night had folded it away. "
    '"Did you see it leave?" she asked the man mending nets. He shook his head! "Nobody leaves '
    'before the fog lifts," he said, "nobody with any sense." She wrote three things in her '
    "notebook: the time, the tide, and the colour of the water, which was the grey of old "
    "pewter.\nThen she went to find the harbourmaster, who would know, or would at least "
    "pretend to know, which was nearly as useful; harbourmasters, in her experience, were paid "
    "to be certain about things that nobody could be certain about, and they earned every penny "
    "of it by never once admitting doubt in front of a stranger from the city?"
)


def _words(parts: list[str]) -> list[str]:
    return " ".join(parts).split()


def test_sentences_become_segments_in_order_with_every_word() -> None:
    segments = split_segments(PROSE)
    assert _words(segments) == PROSE.split()
    assert segments[0] == "The harbour was quiet that morning."
    assert segments[1].startswith("Gulls circled")
    assert '"Did you see it leave?"' in segments
    assert all(0 < len(s) <= MAX_SEGMENT_CHARS for s in segments)


def test_a_long_sentence_is_cut_at_clauses_then_words() -> None:
    long_sentence = ", ".join(f"clause number {i} goes on a while" for i in range(30)) + "."
    segments = split_segments(long_sentence, max_chars=100)
    assert len(segments) > 1
    assert all(len(s) <= 100 for s in segments)
    assert all(s.endswith(",") or s.endswith(".") for s in segments)  # cut at a clause's end
    assert _words(segments) == long_sentence.split()
    no_commas = " ".join(["word"] * 80)
    assert all(len(s) <= 100 for s in split_segments(no_commas, max_chars=100))
    assert _words(split_segments(no_commas, max_chars=100)) == no_commas.split()
    assert split_segments("x" * 250, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_empty_and_blank_text_give_no_segments() -> None:
    assert split_segments("") == []
    assert split_segments("  \n\n  ") == []
    assert split_segments("One.") == ["One."]


@pytest.mark.parametrize("seed", range(5))
def test_live_text_in_any_pieces_gives_the_same_segments(seed: int) -> None:
    """Whatever the pieces the text comes in (an LLM's tokens), every word comes out once, in
    order, and a sentence that fits a segment is the same segment as in the whole text (a longer
    one may be cut elsewhere, since it is spoken before it ends)."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(PROSE)), 60))
    pieces = [PROSE[a:b] for a, b in zip([0, *cuts], [*cuts, len(PROSE)], strict=True)]
    buffer = SentenceBuffer()
    got: list[str] = []
    for piece in pieces:
        got.extend(buffer.feed(piece))
    got.extend(buffer.flush())
    assert _words(got) == PROSE.split()
    assert all(0 < len(s) <= MAX_SEGMENT_CHARS for s in got)
    whole = split_segments(PROSE)
    assert got[:-2] == whole[:-2]  # only the last sentence is longer than a segment


def test_a_sentence_is_given_out_once_a_space_follows_its_end() -> None:
    buffer = SentenceBuffer()
    assert buffer.feed("Hello there") == []
    assert buffer.feed(".") == []  # "3." of "3.5", or "e.g." mid-token: not an end yet
    assert buffer.feed(" How") == ["Hello there."]
    assert buffer.pending == "How"
    assert buffer.feed(" is 3.5 today?\n") == ["How is 3.5 today?"]
    assert buffer.flush() == []


def test_an_endless_sentence_is_given_out_by_clauses() -> None:
    buffer = SentenceBuffer(max_chars=60)
    out: list[str] = []
    for i in range(20):
        out.extend(buffer.feed(f"and then part {i} came along, "))
    assert out, "a sentence past the segment size must not wait for its end"
    assert all(len(s) <= 60 for s in out)
    out.extend(buffer.flush())
    assert _words(out) == " ".join(f"and then part {i} came along," for i in range(20)).split()


@pytest.mark.parametrize("chars_per_second", [10.0, 12.0, 16.0])
def test_budgets_outlast_ordinary_speech(chars_per_second: float) -> None:
    """No segment of ordinary prose runs out of budget at slow (10 chars/s), ordinary (12) or
    quick (16) speech; the cap is only reached by segments near the longest."""
    for segment in split_segments(PROSE * 3):
        spoken_ms = 1000 * len(segment) / chars_per_second
        assert segment_budget_ms(segment, cap_ms=30_000) > spoken_ms, segment


def test_a_budget_follows_its_text_up_to_the_cap() -> None:
    short, long = (
        segment_budget_ms("Hi.", cap_ms=30_000),
        segment_budget_ms("x" * 200, cap_ms=30_000),
    )
    assert 2000 <= short < long <= 30_000
    assert segment_budget_ms("x" * 200, cap_ms=1000) == 1000
