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
