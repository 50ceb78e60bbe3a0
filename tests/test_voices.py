"""Named voices: a reference clip encoded to codes once, on a worker; bound to a speaker, it is
pinned at the head of that speaker's every prompt, inside the 2048-position budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, update

from shared.db.models import Conversation, Voice
from tests.conftest import DB_KINDS
from tests.expected import expected_codes, served_codes
from tests.sounds import audio_file, chirp, read
from tests.stack import Stack, database

REFERENCE_TEXT = "This is how Anna sounds when she talks."


def post_voice(stack: Stack, name: str, data: bytes, text: str = REFERENCE_TEXT, **kw: Any) -> Any:
    headers = kw.pop("headers", None)
    fields = {"name": name, "text": text, **{k: str(v) for k, v in kw.items()}}
    return stack.client.post(
        "/v1/voices",
        data=fields,
        files={"audio": ("ref.wav", data, "application/octet-stream")},
        headers=headers,
    )


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


# --- the REST surface, without workers ---------------------------------------------------


@pytest.fixture(params=DB_KINDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with database(request.param, tmp_path) as url:
        stack = Stack(
            db_url=url,
            tmp=tmp_path,
            model="unused",
            api_keys="alpha-key, beta-key",
            max_voices_per_key=3,
            max_upload_bytes=400_000,
            max_upload_duration_ms=5000,
        )
        try:
            yield stack
        finally:
            stack.close()


ALPHA = {"Authorization": "Bearer alpha-key"}
BETA = {"Authorization": "Bearer beta-key"}
CLIP = audio_file(chirp(1.0, 16_000), 16_000)


def error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return str(r.json()["error"]["message"])


def counts(stack: Stack) -> tuple[int, int]:
    with stack.app.state.parley.sessions() as session:
        voices = session.scalar(select(func.count()).select_from(Voice))
        conversations = session.scalar(select(func.count()).select_from(Conversation))
        return int(voices or 0), int(conversations or 0)


def test_voices_list_get_delete_and_owners(api: Stack) -> None:
    c = api.client
    assert post_voice(api, "anna", CLIP, headers=ALPHA).status_code == 202
    r = post_voice(api, "bob", CLIP, text="Bob's clip.", speaker=3, headers=ALPHA)
    assert r.status_code == 202, r.text
    bob = r.json()
    assert (bob["name"], bob["text"], bob["speaker"], bob["duration_ms"]) == (
        "bob",
        "Bob's clip.",
        3,
        1000,
    )
    assert [v["name"] for v in c.get("/v1/voices", headers=ALPHA).json()] == ["anna", "bob"]
    got = c.get("/v1/voices/bob", headers=ALPHA).json()
    assert {**got, "created_at": None} == {**bob, "created_at": None}  # (SQLite drops the Z)
    error(c.get("/v1/voices/bob/codes", headers=ALPHA), 409, "no_codes")  # still encoding
    samples, rate, _ = read(c.get("/v1/voices/bob/audio?format=flac", headers=ALPHA).content)
    assert rate == 24_000 and len(samples) == 24_000

    # Another key sees none of them, and has a namespace of its own.
    assert c.get("/v1/voices", headers=BETA).json() == []
    for method, path in [
        ("GET", "/v1/voices/bob"),
        ("GET", "/v1/voices/bob/audio"),
        ("GET", "/v1/voices/bob/codes"),
        ("DELETE", "/v1/voices/bob"),
    ]:
        error(c.request(method, path, headers=BETA), 404, "not_found")
    assert post_voice(api, "anna", CLIP, headers=BETA).status_code == 202
    msg = error(
        c.post("/v1/conversations", json={"speakers": {"0": "bob"}}, headers=BETA),
        422,
        "unknown_voice",
    )
    assert "'bob'" in msg
    assert counts(api) == (3, 0)  # nothing written

    # Bound, a voice cannot be deleted; unbound, it can.
    r = c.post("/v1/conversations", json={"speakers": {"0": "anna", "2": "bob"}}, headers=ALPHA)
    assert r.status_code == 201 and r.json()["speakers"] == {"0": "anna", "2": "bob"}
    cid = r.json()["id"]
    error(
        c.patch(f"/v1/conversations/{cid}", json={"speakers": {"1": "anna"}}, headers=BETA),
        404,
        "not_found",
    )
    msg = error(c.delete("/v1/voices/bob", headers=ALPHA), 409, "voice_in_use")
    assert cid in msg and "speaker 2" in msg
    r = c.patch(f"/v1/conversations/{cid}", json={"speakers": {"2": None}}, headers=ALPHA)
    assert r.status_code == 200 and r.json()["speakers"] == {"0": "anna"}

    # ... nor while a turn waiting to be spoken uses it, even once unbound.
    r = c.post(f"/v1/conversations/{cid}/turns", json={"speaker": 0, "text": "Hi."}, headers=ALPHA)
    assert r.status_code == 202, r.text
    job_id, tid = r.json()["job_id"], r.json()["id"]
    c.patch(f"/v1/conversations/{cid}", json={"speakers": {"0": None}}, headers=ALPHA)
    msg = error(c.delete("/v1/voices/anna", headers=ALPHA), 409, "voice_in_use")
    assert tid in msg
    assert c.delete(f"/v1/jobs/{job_id}", headers=ALPHA).status_code == 200
    assert c.delete("/v1/voices/anna", headers=ALPHA).status_code == 204
    assert c.delete("/v1/voices/bob", headers=ALPHA).status_code == 204
    error(c.get("/v1/voices/anna", headers=ALPHA), 404, "not_found")
    assert c.get("/v1/voices", headers=ALPHA).json() == []
    assert [v["name"] for v in c.get("/v1/voices", headers=BETA).json()] == ["anna"]

    # Deleting a conversation drops its bindings.
    r = c.post("/v1/conversations", json={"speakers": {"5": "anna"}}, headers=BETA)
    assert r.status_code == 201
    error(c.delete("/v1/voices/anna", headers=BETA), 409, "voice_in_use")
    assert c.delete(f"/v1/conversations/{r.json()['id']}", headers=BETA).status_code == 204
    assert c.delete("/v1/voices/anna", headers=BETA).status_code == 204


def test_bad_voices_and_bindings_are_refused(api: Stack) -> None:
    c = api.client
    assert post_voice(api, "anna", CLIP, headers=ALPHA).status_code == 202
    before = counts(api)
    error(post_voice(api, "anna", CLIP, headers=ALPHA), 409, "voice_exists")
    for name in ["bad name", "-dash", "x" * 65, "ünï", ""]:
        error(post_voice(api, name, CLIP, headers=ALPHA), 422, "invalid_voice_name")
    error(post_voice(api, "v", b"not audio at all", headers=ALPHA), 422, "invalid_audio")
    error(post_voice(api, "v", b"", headers=ALPHA), 422, "invalid_audio")
    error(post_voice(api, "v", CLIP, text="   ", headers=ALPHA), 422, "empty_text")
    error(post_voice(api, "v", CLIP, speaker="x", headers=ALPHA), 422, "invalid_speaker")
    error(post_voice(api, "v", CLIP, speaker=99, headers=ALPHA), 422, "invalid_speaker")
    for odd in ["²", "--5", "9" * 5000]:  # isdigit() or int() would have let these through
        error(post_voice(api, "v", CLIP, speaker=odd, headers=ALPHA), 422, "invalid_speaker")
    long_clip = audio_file(chirp(6.0, 8_000), 8_000)  # 96 kB, past the 5 s limit
    error(post_voice(api, "v", long_clip, headers=ALPHA), 422, "audio_too_long")
    error(post_voice(api, "v", b"\0" * 400_001, headers=ALPHA), 413, "upload_too_large")
    r = c.post("/v1/voices", data={"name": "v", "text": "t"}, headers=ALPHA)
    error(r, 422, "unsupported_media_type")  # a form without a file is not multipart
    r = c.post("/v1/voices", files={"x": ("a", b"1")}, data={"name": "v"}, headers=ALPHA)
    error(r, 422, "missing_audio")
    error(c.post("/v1/voices", json={"name": "v"}, headers=ALPHA), 422, "unsupported_media_type")
    assert counts(api) == before

    for speakers, code in [
        ({"0": "nobody"}, "unknown_voice"),
        ({"x": "anna"}, "invalid_speaker"),
        ({"-1": "anna"}, "invalid_speaker"),
        ({"99": "anna"}, "invalid_speaker"),
        ({"0": 3}, "invalid_input"),
    ]:
        error(c.post("/v1/conversations", json={"speakers": speakers}, headers=ALPHA), 422, code)
    assert counts(api) == before
    cid = c.post("/v1/conversations", json={}, headers=ALPHA).json()["id"]
    for body, code in [
        ({"speakers": {"0": "anna", "1": "nobody"}}, "unknown_voice"),
        ({"speakers": {"0": "anna"}, "metadata": {}}, "invalid_input"),
        ({}, "invalid_input"),
    ]:
        error(c.patch(f"/v1/conversations/{cid}", json=body, headers=ALPHA), 422, code)
    assert c.get(f"/v1/conversations/{cid}", headers=ALPHA).json()["speakers"] == {}

    # The per-key limit (3 here): the fourth voice is refused; another key still has room.
    assert post_voice(api, "b", CLIP, headers=ALPHA).status_code == 202
    assert post_voice(api, "c", CLIP, headers=ALPHA).status_code == 202
    msg = error(post_voice(api, "d", CLIP, headers=ALPHA), 409, "voice_limit")
    assert "max_voices_per_key" in msg
    assert post_voice(api, "d", CLIP, headers=BETA).status_code == 202
