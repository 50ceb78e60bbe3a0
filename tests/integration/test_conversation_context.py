"""The context window: oldest turns left out (by count and by the 2048-position budget), and
Redis rebuilt from SQL when its keys are lost — with identical codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.expected import expected_codes, served_codes
from tests.sounds import audio_file, chirp
from tests.stack import Stack


def test_window_keeps_the_newest_turns_by_count(
    make_stack: Callable[..., Stack], engine: Any
) -> None:
    stack = make_stack("sqlite")
    cid = stack.conversation(max_context_turns=2)
    turns = [stack.say(cid, i % 2, f"Turn number {i}, spoken in order.") for i in range(4)]
    assert all(stack.wait_job(t["job_id"])["status"] == "succeeded" for t in turns)
    last = turns[-1]
    want = expected_codes(engine, stack, cid, turns[1:3], last["speaker"], last["text"])
    assert np.array_equal(served_codes(stack, cid, last["id"]), want)
    # the left-out turn mattered: with it, the codes would differ
    longer = expected_codes(engine, stack, cid, turns[0:3], last["speaker"], last["text"])
    assert not np.array_equal(want, longer)
    # Redis keeps only the window's worth of turns
    assert stack.app.state.parley.context.cached_indices(cid) == [2, 3]


def test_window_leaves_out_old_turns_past_the_position_budget(
    make_stack: Callable[..., Stack], engine: Any
) -> None:
    from worker.engine.csm import ContextTurn

    stack = make_stack("sqlite")
    cid = stack.conversation(max_context_turns=10)
    # four provided turns of 40 s (500 frames each): together past the 2048 budget
    provided = [
        stack.upload(cid, i % 2, f"Long turn {i}.", audio_file(chirp(40.0, 16_000, seed=i), 16_000))
        for i in range(4)
    ]
    last = stack.say(cid, 0, "Short reply.", max_audio_length_ms=800)
    for t in [*provided, last]:
        assert stack.wait_job(t["job_id"])["status"] == "succeeded"
    costs = [
        engine.turn_cost(
            ContextTurn(
                speaker=t["speaker"], text=t["text"], codes=served_codes(stack, cid, t["id"])
            )
        )
        for t in provided
    ]
    budget = engine.max_positions - engine.request_cost(0, last["text"]) - 10
    assert sum(costs[1:]) <= budget < sum(costs)  # the oldest cannot fit, the rest can
    want = expected_codes(engine, stack, cid, provided[1:], 0, last["text"])
    assert np.array_equal(served_codes(stack, cid, last["id"]), want)


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_lost_redis_context_is_rebuilt_from_sql(
    make_stack: Callable[..., Stack], db_kind: str
) -> None:
    stack = make_stack(db_kind)
    store = stack.app.state.parley.context
    lines = [(0, "First line."), (1, "Second line."), (0, "Third line."), (1, "Fourth line.")]
    convs = {name: stack.conversation() for name in ("kept", "lost")}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in convs}
    for i, (speaker, text) in enumerate(lines):
        if i == 2:
            store.delete(convs["lost"])  # Redis loses the window mid-conversation
            assert store.cached_indices(convs["lost"]) == []
        for name, cid in convs.items():
            turn = stack.say(cid, speaker, text, temperature=0.8, seed=11 + i)
            results[name].append(turn)
        for name in convs:
            assert stack.wait_job(results[name][-1]["job_id"])["status"] == "succeeded"
    for kept, lost in zip(results["kept"], results["lost"], strict=True):
        assert np.array_equal(
            served_codes(stack, convs["kept"], kept["id"]),
            served_codes(stack, convs["lost"], lost["id"]),
        )
    assert store.cached_indices(convs["lost"]) == [0, 1, 2, 3]  # rebuilt, then appended
