"""The silent-tail guard in a real worker: a run of silent frames ends the turn, its tail cut.

The tiny model's random codec speaks at about -2.5 dBFS, so with a -1 dBFS threshold every
frame it makes counts as silent: the guard must stop the turn after ``tail`` frames and keep
``keep`` of them, and what is stored must be what was streamed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.expected import expected_codes, served_codes
from tests.http_server import serve
from tests.integration.test_stream import full_stream, stored
from tests.stack import Stack
from worker.silence import frame_dbfs

THRESHOLD_DBFS = -1.0
TAIL_MS, KEEP_MS = 480, 160  # 6 frames end the turn, 2 are kept


def test_a_silent_tail_ends_the_turn_and_is_cut(
    make_stack: Callable[..., Stack], engine: Any
) -> None:
    stack = make_stack(
        "sqlite",
        silence_threshold_dbfs=THRESHOLD_DBFS,
        silence_tail_ms=TAIL_MS,
        silence_keep_ms=KEEP_MS,
    )
    cid = stack.conversation()
    params = {"max_audio_length_ms": 2000, "temperature": 0}
    turn = stack.say(cid, 0, "Then nothing at all.", **params)
    job = stack.wait_job(turn["job_id"])
    assert job["status"] == "succeeded", job

    # Without the guard the turn runs to its bound (random weights never end a turn), and
    # every one of its frames is below the threshold: the premise of this test.
    full = expected_codes(engine, stack, cid, [], 0, "Then nothing at all.", **params)
    assert full.shape == (25, 4)
    decoder = engine.stream_decoder()
    levels = [frame_dbfs(np.clip(decoder.push(f[None]), -1, 1)) for f in full[:6]]
    assert max(levels) < THRESHOLD_DBFS, levels

    codes = served_codes(stack, cid, turn["id"])
    np.testing.assert_array_equal(codes, full[:2])  # the kept head of the silent run
    got = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}").json()
    assert got["frames"] == 2 and got["duration_ms"] == 160
    audio = stored(stack, cid, turn["id"])
    assert audio.shape == (2 * 1920,)
    with serve(stack) as url:
        np.testing.assert_array_equal(full_stream(url, cid, turn["id"]), audio)
    assert re.search(r"silent tail after \d+ frames; 4 silent frames cut", stack.worker_logs())
