"""Long turns, spoken whole, against a real worker on the tiny checkpoint: a turn's text is cut
into segments, each spoken with the conversation and the turn's earlier segments as context,
streamed back to back; the stored turn is their concatenation and lists them; the next turn's
context is built from them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared.sentences import split_segments
from tests.stack import Stack, running_stack

SENTENCES = [
    "The harbour was quiet that morning.",
    "Gulls circled the masts, and a radio played an old song about the sea.",
    "Mara walked the pier twice before she noticed the boat was gone.",
]
TEXT = " ".join(SENTENCES)
FRAMES = 3  # per segment: max_audio_length_ms = 240


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("long-turns")
    with running_stack("sqlite", tmp, tiny_model_dir) as s:
        yield s


def pcm(stack: Stack, cid: str, tid: str, *, stream: bool) -> bytes:
    path = f"/v1/conversations/{cid}/turns/{tid}/{'stream' if stream else 'audio'}?format=pcm"
    r = stack.client.get(path)
    assert r.status_code == 200, r.text
    return r.content


def test_a_long_turn_is_spoken_segment_by_segment_and_stored_whole(stack: Stack) -> None:
    cid = stack.conversation()
    turn = stack.say(cid, 0, TEXT, max_audio_length_ms=FRAMES * 80)
    assert [s["text"] for s in turn["segments"]] == SENTENCES
    assert {s["status"] for s in turn["segments"]} == {"pending"}
    streamed = pcm(stack, cid, turn["id"], stream=True)  # opened while it is queued or running
    assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
    done = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}").json()
    segments = done["segments"]
    assert [s["text"] for s in segments] == SENTENCES
    # The tiny random model never ends a segment by itself: each runs to its budget.
    assert [s["frames"] for s in segments] == [FRAMES] * 3
    assert {s["status"] for s in segments} == {"truncated"} and done["truncated"] is True
    assert done["frames"] == 3 * FRAMES and not done["interrupted"]
    stored = pcm(stack, cid, turn["id"], stream=False)
    assert streamed == stored and len(stored) == 3 * FRAMES * 1920 * 2
    assert len(stack.codes(cid, turn["id"])[0]) == 3 * FRAMES


def test_segments_are_seeded_apart_and_reproducible(stack: Stack) -> None:
    """A seeded long turn spoken twice has the same shape, and within a turn a segment's codes
    differ from its neighbour's (each segment gets its own seed, so they are not one sequence
    repeated)."""
    cid = stack.conversation()
    codes = []
    for _ in range(2):
        turn = stack.say(cid, 0, TEXT, max_audio_length_ms=FRAMES * 80, temperature=0.9, seed=7)
        assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
        codes.append(np.array(stack.codes(cid, turn["id"])))
    first, second = codes
    assert first.shape == second.shape
    # The second turn has the first as context, so only its shape and seeding are comparable
    # to the first; within one turn, segments differ.
    assert not np.array_equal(first[:, :FRAMES], first[:, FRAMES : 2 * FRAMES])


def test_without_params_a_segment_budget_follows_its_text(stack: Stack) -> None:
    """No max_audio_length_ms: a short sentence gets a short budget, a long one a longer one,
    never a fixed length (the tiny model runs each to its budget, which shows it)."""
    cid = stack.conversation()
    short, long = "Yes.", "This sentence is a good deal longer than the first one was."
    r = stack.client.post(
        f"/v1/conversations/{cid}/turns",
        json={"speaker": 0, "text": f"{short} {long}", "params": {"temperature": 0}},
    )
    assert r.status_code == 202, r.text
    turn = r.json()
    assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
    done = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}").json()
    frames = [s["frames"] for s in done["segments"]]
    assert frames == [(2000 + 110 * len(short)) // 80, (2000 + 110 * len(long)) // 80]


def test_the_next_turns_context_is_built_from_the_segments(stack: Stack) -> None:
    """A long turn gives the next turn one context piece per segment: the worker logs how many
    pieces of how many the window kept."""
    cid = stack.conversation()
    long = " ".join(f"Sentence number {i} of a long turn goes here." for i in range(12))
    assert len(split_segments(long)) == 12
    first = stack.say(cid, 0, long, max_audio_length_ms=2400)  # 30 frames a segment: 360
    assert stack.wait_job(first["job_id"], timeout=300)["status"] == "succeeded"
    # The next turn's own budget leaves room for only part of the 12 pieces (2048 positions).
    second = stack.say(cid, 1, "And now the reply.", max_audio_length_ms=124_000)
    stack.client.delete(f"/v1/jobs/{second['job_id']}")  # only its prompt matters
    stack.wait_job(second["job_id"])
    logs = stack.worker_logs(tail=None)
    assert "context window keeps" in logs and "of 12 pieces" in logs, logs[-3000:]
