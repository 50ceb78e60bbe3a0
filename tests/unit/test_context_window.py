"""The context window keeps the newest whole turns that fit, and never cuts one in half."""

from shared.redis_io.context import select_window


def test_everything_fits() -> None:
    assert select_window([10, 20, 30], budget=60) == 3


def test_oldest_turns_left_out_first() -> None:
    # newest first: 10 and 20 fit in 35, the third (oldest) does not.
    assert select_window([10, 20, 30], budget=35) == 2


def test_a_turn_that_does_not_fit_ends_the_window() -> None:
    # an older small turn is not pulled in past a newer one that did not fit: no gaps.
    assert select_window([10, 100, 1], budget=50) == 1


def test_newest_turn_too_big_gives_empty_window() -> None:
    assert select_window([3000, 1], budget=2000) == 0
    assert select_window([], budget=10) == 0


def test_exact_fit() -> None:
    assert select_window([5, 5], budget=10) == 2


def test_a_turn_spoken_in_segments_is_context_piece_by_piece() -> None:
    """A stored turn's spoken segments split its codes (the frames say where); a turn without
    segments, or whose segments do not add up to its codes, is one piece."""
    import numpy as np

    from shared.contract.segments import segments_from_json
    from shared.redis_io.context import ContextEntry, spoken_segments

    codes = np.arange(5 * 4).reshape(5, 4)
    stored = [
        {"text": "One.", "frames": 2, "status": "done"},
        {"text": "Two.", "frames": 3, "status": "interrupted"},
        {"text": "Three.", "frames": 0, "status": "dropped"},
    ]
    entry = ContextEntry(
        "t", 0, 1, "One. Two. Three.", codes, spoken_segments(segments_from_json(stored))
    )
    again = ContextEntry.from_bytes(entry.to_bytes())  # through the Redis cache
    for e in (entry, again):
        pieces = e.pieces()
        assert [text for text, _ in pieces] == ["One.", "Two."]
        assert np.array_equal(np.concatenate([c for _, c in pieces]), codes)
    whole = ContextEntry("t", 0, 1, "All of it.", codes)
    assert [text for text, _ in whole.pieces()] == ["All of it."]
    odd = ContextEntry("t", 0, 1, "All of it.", codes, (("One.", 2),))
    assert [text for text, _ in odd.pieces()] == ["All of it."]
