"""The silent-tail guard on constructed frame sequences (numpy only, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from shared.settings import Settings
from worker.silence import Frame, SilenceGuard, frame_dbfs, frames_dbfs

FRAME_SAMPLES = 1920
SAMPLE_RATE = 24_000
NUM_CODEBOOKS = 32


def level(dbfs: float) -> float:
    return 10.0 ** (dbfs / 20.0)


def sine(dbfs: float) -> np.ndarray:
    """A 250 Hz sine (20 whole cycles per frame) with RMS ``dbfs``."""
    t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
    return (math.sqrt(2) * level(dbfs) * np.sin(2 * np.pi * 250 * t)).astype(np.float32)


def noise(dbfs: float, seed: int) -> np.ndarray:
    """Gaussian noise normalised to RMS ``dbfs`` exactly (up to float32 rounding)."""
    x = np.random.default_rng(seed).standard_normal(FRAME_SAMPLES)
    x *= level(dbfs) / np.sqrt(np.mean(x**2))
    return x.astype(np.float32)


def constant(dbfs: float) -> np.ndarray:
    return np.full(FRAME_SAMPLES, level(dbfs), dtype=np.float32)


# One character per frame: speech-like ("S" sine, "N" noise at -20 dBFS) or silent
# ("." zeros, "q" noise at -80 dBFS).
KINDS = {
    "S": lambda i: sine(-20.0),
    "N": lambda i: noise(-20.0, seed=i),
    ".": lambda i: np.zeros(FRAME_SAMPLES, dtype=np.float32),
    "q": lambda i: noise(-80.0, seed=i),
}


def frames(pattern: str) -> list[Frame]:
    """Frame ``i`` has codes all equal to ``i``, so emitted frames can be told apart."""
    return [
        (np.full(NUM_CODEBOOKS, i, dtype=np.int64), KINDS[kind](i))
        for i, kind in enumerate(pattern)
    ]


def run(guard: SilenceGuard, seq: list[Frame]) -> tuple[list[int], int | None]:
    """Drive the guard exactly as the worker does.

    Returns the ids of the emitted frames, in order, and the index of the frame whose push
    triggered the guard (None when it never did).
    """
    emitted: list[Frame] = []
    stopped_at = None
    for i, (codes, samples) in enumerate(seq):
        emitted.extend(guard.push(codes, samples))
        if guard.triggered:
            stopped_at = i
            break
    emitted.extend(guard.finish())
    by_id = {int(codes[0]): (codes, samples) for codes, samples in seq}
    for codes, samples in emitted:  # frames pass through untouched, as the same objects
        original = by_id[int(codes[0])]
        assert codes is original[0] and samples is original[1]
    return [int(codes[0]) for codes, _ in emitted], stopped_at


def guard(tail: int = 5, keep: int = 2, threshold: float = -60.0) -> SilenceGuard:
    return SilenceGuard(threshold_dbfs=threshold, tail_frames=tail, keep_frames=keep)


def test_frame_dbfs() -> None:
    assert frame_dbfs(np.zeros(FRAME_SAMPLES, dtype=np.float32)) == -math.inf
    assert frame_dbfs(np.zeros(0, dtype=np.float32)) == -math.inf
    assert frame_dbfs(np.full(FRAME_SAMPLES, 0.5, dtype=np.float32)) == pytest.approx(
        20 * math.log10(0.5), abs=1e-9
    )
    assert frame_dbfs(np.full(10, -1.0, dtype=np.float32)) == 0.0
    assert frame_dbfs(sine(-20.0)) == pytest.approx(-20.0, abs=0.01)
    assert frame_dbfs(noise(-80.0, seed=3)) == pytest.approx(-80.0, abs=0.01)


def test_frames_dbfs_is_frame_dbfs_of_every_row_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for case in range(100):
        n = int(rng.integers(1, 17))
        scale = 10.0 ** rng.uniform(-5, 0, size=(n, 1))
        rows = (rng.standard_normal((n, FRAME_SAMPLES)) * scale).astype(np.float32)
        rows[rng.random(n) < 0.2] = 0.0
        assert frames_dbfs(rows) == [frame_dbfs(row) for row in rows], case
    special = np.array([[np.nan, 0.0], [np.inf, 0.0], [0.0, 0.0]], dtype=np.float32)
    got = frames_dbfs(special)
    assert math.isnan(got[0]) and got[1:] == [math.inf, -math.inf]
    assert frames_dbfs(np.zeros((2, 0), dtype=np.float32)) == [-math.inf, -math.inf]
    with pytest.raises(ValueError, match="2-D"):
        frames_dbfs(np.zeros(4, dtype=np.float32))


def test_a_level_measured_beforehand_decides_as_the_samples_would() -> None:
    """The publisher measures a step's levels at once and hands them to ``push``."""
    rng = np.random.default_rng(1)
    for case in range(100):
        tail = int(rng.integers(1, 7))
        keep = int(rng.integers(0, tail))
        pattern = "".join(str(rng.choice(list("SN.q"))) for _ in range(int(rng.integers(0, 25))))
        seq = frames(pattern)
        levels = frames_dbfs(np.stack([s for _, s in seq])) if seq else []
        measured, alone = guard(tail=tail, keep=keep), guard(tail=tail, keep=keep)
        for (codes, samples), level_dbfs in zip(seq, levels, strict=True):
            if alone.triggered:
                break
            got = measured.push(codes, samples, level_dbfs=level_dbfs)
            assert [id(c) for c, _ in got] == [id(c) for c, _ in alone.push(codes, samples)]
        assert measured.triggered == alone.triggered, (case, pattern)
        assert len(measured.finish()) == len(alone.finish())


def test_speech_only_is_emitted_unchanged() -> None:
    g = guard()
    assert run(g, frames("SNSNSNSN")) == (list(range(8)), None)
    assert (g.emitted_frames, g.dropped_frames, g.held_frames) == (8, 0, 0)


def test_short_silent_end_is_emitted_unchanged() -> None:
    # Four silent frames at the end (< tail 5): two emitted at once, two held until finish.
    seq = frames("SSS.q.q")
    g = guard()
    out: list[int] = []
    for codes, samples in seq:
        out.extend(int(c[0]) for c, _ in g.push(codes, samples))
    assert out == [0, 1, 2, 3, 4]
    assert not g.triggered and g.held_frames == 2
    assert [int(c[0]) for c, _ in g.finish()] == [5, 6]
    assert (g.emitted_frames, g.dropped_frames, g.held_frames) == (7, 0, 0)
    assert g.finish() == []


def test_mid_turn_pause_shorter_than_tail_is_kept_whole() -> None:
    g = guard()
    seq = frames("SS.q.qSS")
    out: list[int] = []
    for codes, samples in seq:
        out.append(len(g.push(codes, samples)))
    # per push: speech 1, 1; silent 1, 1 (kept), 0, 0 (held); speech flushes 2 + itself; 1
    assert out == [1, 1, 1, 1, 0, 0, 3, 1]
    assert run(guard(), frames("SS.q.qSS")) == (list(range(8)), None)


def test_speech_resuming_flushes_held_frames_in_order() -> None:
    g = guard(tail=6, keep=1)
    seq = frames("S.q.q.N")
    for codes, samples in seq[:6]:
        g.push(codes, samples)
    assert g.held_frames == 4 and g.silent_run_frames == 5
    flushed = g.push(*seq[6])
    assert [int(c[0]) for c, _ in flushed] == [2, 3, 4, 5, 6]
    assert (g.held_frames, g.silent_run_frames) == (0, 0)


def test_long_silent_tail_triggers_at_the_tail_frame() -> None:
    # Speech 0-2, then silence from frame 3: the 5th silent frame (index 7) triggers.
    g = guard(tail=5, keep=2)
    ids, stopped_at = run(g, frames("SSS.q.q.q.q.q"))
    assert stopped_at == 7
    assert ids == [0, 1, 2, 3, 4]  # ends with exactly keep=2 silent frames
    assert g.triggered
    assert (g.emitted_frames, g.dropped_frames, g.held_frames) == (5, 3, 0)


def test_trigger_after_an_earlier_pause() -> None:
    # A 4-frame pause (kept whole) then a 5-frame tail: only the second run counts.
    ids, stopped_at = run(guard(tail=5, keep=2), frames("S....SS.....SS"))
    assert stopped_at == 11
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_keep_zero_cuts_the_whole_tail() -> None:
    g = guard(tail=3, keep=0)
    ids, stopped_at = run(g, frames("SS.q.SS"))
    assert (ids, stopped_at) == ([0, 1], 4)
    assert g.dropped_frames == 3
    # A pause shorter than the tail is still kept whole, just held first.
    assert run(guard(tail=3, keep=0), frames("S..S.")) == ([0, 1, 2, 3, 4], None)


def test_tail_of_one_frame() -> None:
    ids, stopped_at = run(guard(tail=1, keep=0), frames("SNq.."))
    assert (ids, stopped_at) == ([0, 1], 2)


def test_silence_from_the_first_frame() -> None:
    ids, stopped_at = run(guard(tail=4, keep=1), frames("......"))
    assert (ids, stopped_at) == ([0], 3)


def test_threshold_boundary() -> None:
    just_below = (np.full(NUM_CODEBOOKS, 1, dtype=np.int64), constant(-60.1))
    just_above = (np.full(NUM_CODEBOOKS, 2, dtype=np.int64), constant(-59.9))
    g = guard(tail=1, keep=0, threshold=-60.0)
    assert not g.is_silent(just_above[1]) and g.is_silent(just_below[1])
    assert g.push(*just_above) == [just_above]
    assert g.push(*just_below) == [] and g.triggered

    # Exactly at the threshold is not silent (strictly below is).
    half = np.full(FRAME_SAMPLES, 0.5, dtype=np.float32)
    at = guard(tail=1, keep=0, threshold=frame_dbfs(half))
    assert not at.is_silent(half)
    assert at.is_silent(np.nextafter(half, np.float32(0)))

    # Quiet noise is silent at -60 but not at a -90 dBFS threshold; zeros are silent always.
    assert run(guard(tail=2, keep=0, threshold=-90.0), frames("SqqqS")) == ([0, 1, 2, 3, 4], None)
    assert run(guard(tail=2, keep=0, threshold=-90.0), frames("Sq..S")) == ([0, 1], 3)
    assert guard(threshold=0.0).is_silent(np.zeros(4, dtype=np.float32))


def test_matches_a_reference_on_random_sequences() -> None:
    """Against the spec written offline: the turn is cut at the first run of ``tail`` silent
    frames, keeping its first ``keep``; a turn without such a run is unchanged."""
    rng = np.random.default_rng(0)
    for case in range(300):
        tail = int(rng.integers(1, 7))
        keep = int(rng.integers(0, tail))
        length = int(rng.integers(0, 25))
        p_silent = rng.uniform(0.3, 0.9)
        pattern = "".join(
            str(rng.choice([".", "q"])) if rng.random() < p_silent else "S" for _ in range(length)
        )
        run_start, cut = 0, None
        for i, kind in enumerate(pattern):
            if kind == "S":
                run_start = i + 1
            elif i - run_start + 1 == tail:
                cut = (run_start + keep, i)
                break
        expected = (list(range(length)), None) if cut is None else (list(range(cut[0])), cut[1])
        assert run(guard(tail=tail, keep=keep), frames(pattern)) == expected, (case, pattern)


def test_push_after_trigger_or_finish_is_refused() -> None:
    g = guard(tail=1, keep=0)
    (codes, samples), speech = frames(".S")
    g.push(codes, samples)
    assert g.triggered
    with pytest.raises(RuntimeError, match="triggered or finished"):
        g.push(*speech)
    assert g.finish() == []

    done = guard()
    done.finish()
    with pytest.raises(RuntimeError, match="triggered or finished"):
        done.push(*speech)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold_dbfs": 0.5, "tail_frames": 5, "keep_frames": 2}, "threshold_dbfs"),
        ({"threshold_dbfs": math.nan, "tail_frames": 5, "keep_frames": 2}, "threshold_dbfs"),
        ({"threshold_dbfs": -math.inf, "tail_frames": 5, "keep_frames": 2}, "threshold_dbfs"),
        ({"threshold_dbfs": -60.0, "tail_frames": 0, "keep_frames": 0}, "tail_frames"),
        ({"threshold_dbfs": -60.0, "tail_frames": 5, "keep_frames": -1}, "keep_frames"),
        ({"threshold_dbfs": -60.0, "tail_frames": 5, "keep_frames": 5}, "keep_frames"),
        ({"threshold_dbfs": -60.0, "tail_frames": 5, "keep_frames": 6}, "keep_frames"),
    ],
)
def test_argument_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SilenceGuard(**kwargs)  # type: ignore[arg-type]


def test_valid_edges_are_accepted() -> None:
    g = SilenceGuard(threshold_dbfs=0.0, tail_frames=1, keep_frames=0)
    assert (g.threshold_dbfs, g.tail_frames, g.keep_frames) == (0.0, 1, 0)


def test_from_settings() -> None:
    assert SilenceGuard.from_settings(Settings(silence_guard=False)) is None

    g = SilenceGuard.from_settings(Settings())
    assert g is not None
    assert (g.threshold_dbfs, g.tail_frames, g.keep_frames) == (-60.0, 25, 4)

    # The tail rounds up to whole frames (at least that long), the kept part down.
    g = SilenceGuard.from_settings(
        Settings(silence_threshold_dbfs=-45.0, silence_tail_ms=2010, silence_keep_ms=330)
    )
    assert g is not None
    assert (g.threshold_dbfs, g.tail_frames, g.keep_frames) == (-45.0, 26, 4)

    g = SilenceGuard.from_settings(Settings(silence_tail_ms=1000, silence_keep_ms=0), frame_ms=40)
    assert g is not None
    assert (g.tail_frames, g.keep_frames) == (25, 0)

    with pytest.raises(ValueError, match="frame_ms"):
        SilenceGuard.from_settings(Settings(), frame_ms=0)


def test_settings_refuse_a_keep_not_below_the_tail() -> None:
    with pytest.raises(ValidationError, match="silence_keep_ms"):
        Settings(silence_tail_ms=800, silence_keep_ms=800)
    assert Settings(silence_tail_ms=800, silence_keep_ms=720).silence_keep_ms == 720
