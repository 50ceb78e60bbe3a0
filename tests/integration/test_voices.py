"""Named voices: a reference clip encoded to codes once, on a worker; bound to a speaker, it is
pinned at the head of that speaker's every prompt, inside the 2048-position budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from shared.db.models import Voice
from tests.conftest import DB_KINDS
from tests.expected import expected_codes, served_codes
from tests.sounds import audio_file, chirp, read
from tests.stack import Stack
from tests.voices import post_voice


def make_voice(stack: Stack, name: str, seconds: float = 1.5, **kw: Any) -> dict[str, Any]:
    r = post_voice(stack, name, audio_file(chirp(seconds, 16_000, seed=3), 16_000), **kw)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "encoding" and body["frames"] is None
    return dict(body)


def wait_voice(stack: Stack, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        voice = stack.client.get(f"/v1/voices/{name}").json()
        if voice["status"] != "encoding":
            return dict(voice)
        time.sleep(0.05)
    raise TimeoutError(f"voice {name} is still encoding:\n{stack.worker_logs()}")


def voice_codes(stack: Stack, name: str) -> np.ndarray:
    r = stack.client.get(f"/v1/voices/{name}/codes")
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["codes"], dtype=np.int64).T


def reference(stack: Stack, name: str, speaker: int) -> Any:
    from worker.engine.csm import ContextTurn

    text = stack.client.get(f"/v1/voices/{name}").json()["text"]
    return ContextTurn(speaker=speaker, text=text, codes=voice_codes(stack, name))


def drop_broker_queue(stack: Stack) -> None:
    """Lose every message waiting in the broker (as a Redis emptied would)."""
    key = f"{stack.settings.redis_prefix}:celery:{stack.settings.queue_name}"
    assert stack.redis.llen(key) == 1
    stack.redis.delete(key)


def succeeded(stack: Stack, *turns: dict[str, Any]) -> None:
    for t in turns:
        job = stack.wait_job(t["job_id"])
        assert job["status"] == "succeeded", job


@pytest.mark.parametrize("db_kind", DB_KINDS)
def test_bound_voice_is_pinned_at_the_head_of_its_speakers_prompts(
    make_stack: Callable[..., Stack], engine: Any, db_kind: str
) -> None:
    stack = make_stack(db_kind)
    make_voice(stack, "anna")
    voice = wait_voice(stack, "anna")
    assert voice["status"] == "ready" and voice["error"] is None
    assert voice["duration_ms"] == 1500 and voice["frames"] == 19
    # Encoded once, on a worker: exactly the engine's codes of the stored 24 kHz clip.
    samples, rate, channels = read(stack.client.get("/v1/voices/anna/audio").content)
    assert (rate, channels) == (24_000, 1) and abs(len(samples) - 1.5 * 24_000) < 10
    assert np.array_equal(voice_codes(stack, "anna"), engine.encode(samples))

    cid = stack.conversation(speakers={"0": "anna"})
    assert stack.client.get(f"/v1/conversations/{cid}").json()["speakers"] == {"0": "anna"}
    seeded = {"temperature": 0.9, "top_k": 20, "seed": 5}
    turns = [
        stack.say(cid, 0, "Hello there."),
        stack.say(cid, 1, "Hi, who is this?"),
        stack.say(cid, 0, "It is me, Anna.", **seeded),
    ]
    succeeded(stack, *turns)
    anna_as_0 = reference(stack, "anna", 0)
    for i, (turn, params) in enumerate(zip(turns, [{}, {}, seeded], strict=True)):
        head = [anna_as_0] if turn["speaker"] == 0 else []
        args = (engine, stack, cid, turns[:i], turn["speaker"], turn["text"])
        want = expected_codes(*args, head=head, **params)
        assert np.array_equal(served_codes(stack, cid, turn["id"]), want), i
        if head:  # the reference mattered: without it the codes differ
            assert not np.array_equal(want, expected_codes(*args, **params))

    # Rebinding applies to the turns posted after it: speaker 0 is itself again, 1 is Anna.
    r = stack.client.patch(f"/v1/conversations/{cid}", json={"speakers": {"0": None, "1": "anna"}})
    assert r.status_code == 200, r.text
    assert r.json()["speakers"] == {"1": "anna"} and r.json()["turn_count"] == 3
    later = [stack.say(cid, 1, "Now I sound like Anna."), stack.say(cid, 0, "And I am myself.")]
    succeeded(stack, *later)
    history = [*turns, *later]
    for i, turn in enumerate(later, start=len(turns)):
        head = [reference(stack, "anna", 1)] if turn["speaker"] == 1 else []
        want = expected_codes(
            engine, stack, cid, history[:i], turn["speaker"], turn["text"], head=head
        )
        assert np.array_equal(served_codes(stack, cid, turn["id"]), want), i


def test_the_reference_takes_its_share_of_the_position_budget(
    make_stack: Callable[..., Stack], engine: Any
) -> None:
    from shared.redis_io.context import select_window

    stack = make_stack("sqlite", max_audio_length_ms=60_000)
    make_voice(stack, "long", seconds=100.0)  # 1250 frames of the 2048 positions
    assert wait_voice(stack, "long")["frames"] == 1250
    cid = stack.conversation(max_context_turns=10, speakers={"0": "long"})
    provided = [
        stack.upload(cid, 1, f"Context turn {i}.", audio_file(chirp(20.0, 16_000, seed=i), 16_000))
        for i in range(4)
    ]
    last = stack.say(cid, 0, "Short reply.")  # 800 ms: 10 frames
    succeeded(stack, *provided, last)

    ref = reference(stack, "long", 0)
    costs = [
        engine.turn_cost(reference_like(t, served_codes(stack, cid, t["id"]))) for t in provided
    ]
    budget = engine.max_positions - engine.request_cost(0, last["text"]) - 10
    assert select_window(costs[::-1], budget=budget) == 4  # alone, every turn would fit
    left = budget - engine.turn_cost(ref)
    assert sum(costs[2:]) <= left < sum(costs[1:])  # with the reference, the two newest
    want = expected_codes(engine, stack, cid, provided[2:], 0, last["text"], head=[ref])
    assert np.array_equal(served_codes(stack, cid, last["id"]), want)

    # A turn that cannot fit beside the reference fails with a clear code; the conversation
    # goes on, and an unbound speaker's turn is unaffected (every earlier turn fits).
    too_long = stack.say(cid, 0, "A very long answer.", max_audio_length_ms=60_000)
    after = stack.say(cid, 1, "Fine, then.")
    job = stack.wait_job(too_long["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "voice_reference_too_long"
    assert "reference" in job["error"]["message"]
    succeeded(stack, after)
    want = expected_codes(engine, stack, cid, [*provided, last], 1, after["text"])
    assert np.array_equal(served_codes(stack, cid, after["id"]), want)


def reference_like(turn: dict[str, Any], codes: np.ndarray) -> Any:
    from worker.engine.csm import ContextTurn

    return ContextTurn(speaker=turn["speaker"], text=turn["text"], codes=codes)


def test_a_lost_encoding_task_is_sent_again(make_stack: Callable[..., Stack], engine: Any) -> None:
    stack = make_stack("sqlite", workers=0, voice_resend_s=1)
    make_voice(stack, "anna")
    drop_broker_queue(stack)
    stack.start_worker()
    assert wait_voice(stack, "anna")["status"] == "ready"
    assert "sending it to the workers again" in stack.worker_logs(tail=None)
    samples, _, _ = read(stack.client.get("/v1/voices/anna/audio").content)
    assert np.array_equal(voice_codes(stack, "anna"), engine.encode(samples))


@pytest.mark.parametrize("db_kind", DB_KINDS)
def test_a_turn_whose_voice_is_still_encoding_encodes_it_itself(
    make_stack: Callable[..., Stack], engine: Any, db_kind: str
) -> None:
    stack = make_stack(db_kind, workers=0, voice_resend_s=3600)
    make_voice(stack, "anna")
    drop_broker_queue(stack)  # its task is lost, and nothing sends it again in time
    cid = stack.conversation(speakers={"0": "anna"})
    turn = stack.say(cid, 0, "Hello there.")
    stack.start_worker()
    succeeded(stack, turn)
    assert "still encoding; encoding it here" in stack.worker_logs(tail=None)
    assert stack.client.get("/v1/voices/anna").json()["status"] == "ready"
    want = expected_codes(
        engine, stack, cid, [], 0, turn["text"], head=[reference(stack, "anna", 0)]
    )
    assert np.array_equal(served_codes(stack, cid, turn["id"]), want)


def test_a_voice_that_cannot_be_encoded_fails_its_turns_clearly(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("sqlite", workers=0)
    make_voice(stack, "anna")
    cid = stack.conversation(speakers={"0": "anna"})
    bound, unbound = stack.say(cid, 0, "Hello there."), stack.say(cid, 1, "Hi.")
    with stack.app.state.parley.sessions() as session:  # its stored clip is damaged
        session.execute(update(Voice).values(audio_flac=b"not flac"))
        session.commit()
    stack.start_worker()
    job = stack.wait_job(bound["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "voice_failed", job
    assert "'anna' failed to encode" in job["error"]["message"]
    succeeded(stack, unbound)  # the conversation goes on
    voice = stack.client.get("/v1/voices/anna").json()
    assert voice["status"] == "failed" and voice["error"]["code"] == "voice_failed"
    r = stack.client.patch(f"/v1/conversations/{cid}", json={"speakers": {"1": "anna"}})
    error(r, 422, "voice_failed")
    r = stack.client.patch(f"/v1/conversations/{cid}", json={"speakers": {"0": None}})
    assert r.status_code == 200 and r.json()["speakers"] == {}
    assert stack.client.delete("/v1/voices/anna").status_code == 204


def error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return str(r.json()["error"]["message"])
