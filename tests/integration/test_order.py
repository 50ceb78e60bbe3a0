"""Order under load: two worker processes, several conversations, turns posted back to back.
Each conversation runs strictly in order with all its earlier turns as context; different
conversations run side by side on different workers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from tests.expected import expected_codes, served_codes
from tests.stack import Stack


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_order_under_load(make_stack: Callable[..., Stack], engine: Any, db_kind: str) -> None:
    stack = make_stack(db_kind, workers=2)
    convs = [stack.conversation() for _ in range(3)]
    posted: dict[str, list[dict[str, Any]]] = {cid: [] for cid in convs}
    for k in range(3):  # back to back, interleaved across conversations, no waiting
        for n, cid in enumerate(convs):
            posted[cid].append(
                stack.say(cid, k % 2, f"Conversation {n}, turn {k}.", max_audio_length_ms=1600)
            )
    jobs = {
        cid: [stack.wait_job(t["job_id"], timeout=180) for t in turns]
        for cid, turns in posted.items()
    }
    for cid, conv_jobs in jobs.items():
        assert [j["status"] for j in conv_jobs] == ["succeeded"] * 3
        for before, after in zip(conv_jobs, conv_jobs[1:], strict=False):
            assert _t(after["started_at"]) >= _t(before["finished_at"])
        turns = posted[cid]
        for k, turn in enumerate(turns):
            want = expected_codes(
                engine,
                stack,
                cid,
                turns[:k],
                turn["speaker"],
                turn["text"],
                max_audio_length_ms=1600,
            )
            assert np.array_equal(served_codes(stack, cid, turn["id"]), want)

    every = [j for conv_jobs in jobs.values() for j in conv_jobs]
    assert len({j["worker"] for j in every}) == 2  # both workers took turns
    spans = [(_t(j["started_at"]), _t(j["finished_at"]), j["conversation_id"]) for j in every]
    overlapping = any(
        a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for a in spans for b in spans if a is not b
    )
    assert overlapping, "no two conversations ever ran at the same time"
