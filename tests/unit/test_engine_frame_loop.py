"""Parley's frame loop and continuous batching against transformers' generate (tiny checkpoint)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from tests.frames import run_frames
from worker.engine.csm import ContextTurn, CsmEngine, SamplingParams
from worker.engine.frame_loop import FrameLoop
from worker.engine.hf import cache_keyword

RNG = np.random.default_rng(5)
CONTEXT = [
    ContextTurn(0, "Hello there, how was the trip?", RNG.integers(0, 64, (18, 4))),
    ContextTurn(1, "Long, but the view was worth it.", RNG.integers(0, 64, (25, 4))),
    ContextTurn(0, "Tell me everything.", RNG.integers(0, 64, (9, 4))),
]
# (context turns, speaker, text, greedy max_frames) per turn of a batch.
TURNS = [
    (CONTEXT, 1, "Well, it started at dawn.", 24),
    ([], 0, "A turn with no context at all.", 9),
    (CONTEXT[:1], 1, "Only one turn before me.", 31),
    (CONTEXT[:2], 0, "Two turns before me, and a longer text than the others.", 17),
    ([], 1, "Short.", 40),
]


def _embeds(engine: CsmEngine, context: list[ContextTurn], speaker: int, text: str) -> Any:
    return engine._prompt.embed(context, speaker, text)[0]


@pytest.mark.parametrize("n_context", [0, 1, 3])
def test_greedy_loop_equals_transformers_generate(engine: CsmEngine, n_context: int) -> None:
    params = SamplingParams(temperature=0, max_frames=40)
    text = "The loop must say exactly this."
    ref = engine.generate_reference(CONTEXT[:n_context], 1, text, params)
    mine = engine.generate(CONTEXT[:n_context], 1, text, params)
    assert ref.shape == (40, 4)
    np.testing.assert_array_equal(mine, ref)


def test_batched_turns_equal_each_turn_alone(engine: CsmEngine) -> None:
    loop = FrameLoop(engine._model, max_batch=4)
    items = [
        (f"t{i}", _embeds(engine, ctx, spk, text), SamplingParams(0, 0, n))
        for i, (ctx, spk, text, n) in enumerate(TURNS)
    ]
    alone = {key: run_frames(loop, {0: [(key, e, p)]})[key] for key, e, p in items}
    for key, (ctx, spk, text, n) in zip(alone, TURNS, strict=True):
        ref = engine.generate_reference(ctx, spk, text, SamplingParams(temperature=0, max_frames=n))
        np.testing.assert_array_equal(alone[key], ref)
    # Four join at once, the fifth waits for a slot and joins mid-run at step 12; rows of
    # different lengths leave at different frames and the packing moves rows between slots.
    together = run_frames(loop, {0: items[:4], 12: items[4:]})
    for key in alone:
        np.testing.assert_array_equal(together[key], alone[key], err_msg=key)
    assert not loop.rows and loop.free_slots == 4


def test_turns_prefilled_together_equal_each_turn_alone(engine: CsmEngine) -> None:
    """One prefill pass for prompts of different lengths (right-padded) gives every turn the
    codes it gets alone, greedy and sampled, and joins them beside a row already running."""
    loop = FrameLoop(engine._model, max_batch=5)
    items = [
        (f"t{i}", _embeds(engine, ctx, spk, text), SamplingParams(0, 0, n))
        for i, (ctx, spk, text, n) in enumerate(TURNS)
    ]
    items[2] = ("t2", items[2][1], SamplingParams(1.2, 30, 31, seed=4))
    lengths = {e.shape[1] for _, e, _ in items}
    assert len(lengths) == len(items)  # really different lengths, so really padded
    alone = {key: run_frames(loop, {0: [(key, e, p)]})[key] for key, e, p in items}
    together: dict[str, list[np.ndarray]] = {key: [] for key, _, _ in items}

    def step() -> None:
        for result in loop.step():
            if result.frame is not None:
                together[str(result.key)].append(result.frame.numpy())

    loop.admit(*items[0])
    step()
    step()
    rows = loop.admit_many(items[1:])
    assert [r.key for r in rows] == ["t1", "t2", "t3", "t4"] and loop.free_slots == 0
    while loop.rows:
        step()
    for key in alone:
        np.testing.assert_array_equal(np.array(together[key]), alone[key], err_msg=key)
    with pytest.raises(ValueError, match="exceeds"):  # one bad row: nothing is admitted
        loop.admit_many([items[0], ("big", items[1][1], SamplingParams(0, 0, 2048))])
    assert not loop.rows


def test_full_batch_refuses_and_frees_a_slot_when_a_turn_ends(engine: CsmEngine) -> None:
    loop = FrameLoop(engine._model, max_batch=2)
    e = _embeds(engine, [], 0, "x")
    loop.admit("a", e, SamplingParams(0, 0, 2))
    loop.admit("b", e, SamplingParams(0, 0, 5))
    with pytest.raises(ValueError, match="full"):
        loop.admit("c", e, SamplingParams(0, 0, 5))
    loop.step()
    done = loop.step()
    assert [(r.key, r.done) for r in done] == [("a", True), ("b", False)]
    assert loop.free_slots == 1  # freed within the step that finished "a"
    with pytest.raises(ValueError, match="exceeds"):
        loop.admit("d", e, SamplingParams(0, 0, 2048))
    loop.admit("c", e, SamplingParams(0, 0, 5))
    assert loop.free_slots == 0


def test_cancel_mid_batch_leaves_the_other_turns_unchanged(engine: CsmEngine) -> None:
    loop = FrameLoop(engine._model, max_batch=4)
    items = [
        (f"t{i}", _embeds(engine, ctx, spk, text), SamplingParams(0, 0, n))
        for i, (ctx, spk, text, n) in enumerate(TURNS[:4])
    ]
    alone = {key: run_frames(loop, {0: [(key, e, p)]})[key] for key, e, p in items}
    for key, e, p in items:
        loop.admit(key, e, p)
    got: dict[str, list[np.ndarray]] = {key: [] for key, _, _ in items}
    for step in range(60):
        if step == 5:
            loop.remove("t0")  # t0 is the first row: the last row moves into its slot
            assert loop.free_slots == 1
        for result in loop.step():
            if result.frame is not None:
                got[str(result.key)].append(result.frame.numpy())
    assert len(got["t0"]) == 5
    np.testing.assert_array_equal(np.array(got["t0"]), alone["t0"][:5])
    for key in ("t1", "t2", "t3"):
        np.testing.assert_array_equal(np.array(got[key]), alone[key], err_msg=key)


def test_seeded_sampling_is_deterministic_and_independent_of_the_batch(
    engine: CsmEngine,
) -> None:
    loop = FrameLoop(engine._model, max_batch=4)
    e1 = _embeds(engine, CONTEXT, 1, "Sampled with a seed.")
    e2 = _embeds(engine, CONTEXT[:1], 0, "A neighbour.")
    sampled = SamplingParams(temperature=1.5, top_k=20, max_frames=20, seed=7)
    a = run_frames(loop, {0: [("s", e1, sampled)]})["s"]
    b = run_frames(loop, {0: [("n", e2, SamplingParams(1.0, 0, 30, seed=1)), ("s", e1, sampled)]})[
        "s"
    ]
    np.testing.assert_array_equal(a, b)
    other = run_frames(loop, {0: [("s", e1, SamplingParams(1.5, 20, 20, seed=8))]})["s"]
    greedy = run_frames(loop, {0: [("s", e1, SamplingParams(0, 0, 20))]})["s"]
    assert not np.array_equal(a, other)  # the seed matters
    assert not np.array_equal(a, greedy)  # and this is really sampled
    assert a.min() >= 0 and a.max() < engine.codebook_size  # suppressed ids never drawn


def test_engine_batches_concurrent_callers_and_cancel_frees_the_slot(engine: CsmEngine) -> None:
    """Real threads through ``CsmEngine.generate``: one turn is cancelled from its callback."""
    results: dict[int, np.ndarray] = {}
    occupancy: list[int] = []

    def speak(i: int) -> None:
        ctx, spk, text, n = TURNS[i]
        count = 0

        def on_frame(frame: np.ndarray, audio: np.ndarray) -> bool:
            nonlocal count
            count += 1
            occupancy.append(engine.batcher.active)
            return i == 0 and count == 3  # the first turn stops after three frames

        results[i] = engine.generate(
            ctx, spk, text, SamplingParams(temperature=0, max_frames=n), on_frame=on_frame
        )

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(TURNS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert max(occupancy) > 1  # turns really ran together
    assert results[0].shape == (3, 4)
    for i in range(1, len(TURNS)):
        ctx, spk, text, n = TURNS[i]
        ref = engine.generate_reference(ctx, spk, text, SamplingParams(temperature=0, max_frames=n))
        np.testing.assert_array_equal(results[i], ref, err_msg=f"turn {i}")
    assert engine.batcher.active == 0


def test_a_removal_that_moves_a_fresh_row_forward_keeps_every_turn_exact(
    engine: CsmEngine,
) -> None:
    """Admit after some steps, then remove an old row before the next step: the fresh row
    lands in an early slot and the loop must re-pack rows before stepping."""
    loop = FrameLoop(engine._model, max_batch=4)
    items = [
        (f"t{i}", _embeds(engine, ctx, spk, text), SamplingParams(0, 0, n))
        for i, (ctx, spk, text, n) in enumerate(TURNS[:4])
    ]
    alone = {key: run_frames(loop, {0: [(key, e, p)]})[key] for key, e, p in items}
    got: dict[str, list[np.ndarray]] = {key: [] for key, _, _ in items}
    for key, e, p in items[:3]:
        loop.admit(key, e, p)
    for _ in range(3):
        for result in loop.step():
            got[str(result.key)].append(result.frame.numpy())  # type: ignore[union-attr]
    loop.admit("t3", items[3][1], items[3][2])
    loop.remove("t0")  # the fresh t3 moves into slot 0, ahead of t1 and t2
    assert [r.key for r in loop.rows] == ["t3", "t1", "t2"]
    while loop.rows:
        for result in loop.step():
            if result.frame is not None:
                got[str(result.key)].append(result.frame.numpy())
    np.testing.assert_array_equal(np.array(got["t0"]), alone["t0"][:3])
    for key in ("t1", "t2", "t3"):
        np.testing.assert_array_equal(np.array(got[key]), alone[key], err_msg=key)


def test_cache_keyword_follows_the_installed_signature() -> None:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns); 5.17,
    on the GPU machines, knows only the old one. Both spellings, and neither."""

    def new(x: int, cache: object = None) -> None: ...

    def old(x: int, past_key_values: object = None) -> None: ...

    def neither(x: int) -> None: ...

    assert cache_keyword(new) == "cache"
    assert cache_keyword(old) == "past_key_values"
    with pytest.raises(TypeError, match="takes no KV cache"):
        cache_keyword(neither)
