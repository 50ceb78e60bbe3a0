"""Cancelling a queued or a running job: it stops, stores nothing, and the conversation goes on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.expected import expected_codes, served_codes
from tests.stack import RUNNING_MS, Stack


def _wait_running(stack: Stack, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["frames"] > 0:
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.02)
    raise TimeoutError(job_id)


def test_cancel_queued_and_running(stack: Stack, engine: Any) -> None:
    cid = stack.conversation()
    first = stack.say(cid, 0, "A first turn that finishes.")
    long = stack.say(
        cid, 1, "A long turn, cancelled while it runs.", max_audio_length_ms=RUNNING_MS
    )
    queued = stack.say(cid, 0, "A turn cancelled before it starts.")
    r = stack.client.delete(f"/v1/jobs/{queued['job_id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert stack.wait_job(first["job_id"])["status"] == "succeeded"

    running = _wait_running(stack, long["job_id"])
    assert running["progress"]["frames"] < 375
    r = stack.client.delete(f"/v1/jobs/{long['job_id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    after = stack.say(cid, 1, "The conversation goes on.")
    assert stack.wait_job(after["job_id"])["status"] == "succeeded"

    for job_id in (long["job_id"], queued["job_id"]):
        job = stack.client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["audio_url"] is None
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{long['id']}/audio")
    assert r.status_code == 409
    # cancelling a finished job is a conflict, and changes nothing
    r = stack.client.delete(f"/v1/jobs/{first['job_id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    # neither cancelled turn is context for the next one
    want = expected_codes(engine, stack, cid, [first], 1, after["text"])
    assert np.array_equal(served_codes(stack, cid, after["id"]), want)
    statuses = [t["status"] for t in stack.client.get(f"/v1/conversations/{cid}/turns").json()]
    assert statuses == ["succeeded", "cancelled", "cancelled", "succeeded"]


def test_cancel_stops_within_one_frame_and_frees_the_worker(
    make_stack: Callable[..., Stack],
) -> None:
    # One turn at a time: the other conversation's turn can only run once the worker is free.
    stack = make_stack("sqlite", workers=1, max_batch=1)
    long_cid, other_cid = stack.conversation(), stack.conversation()
    long = stack.say(long_cid, 0, "A long turn, cancelled at once.", max_audio_length_ms=RUNNING_MS)
    _wait_running(stack, long["job_id"])
    waiting = stack.say(other_cid, 1, "Waiting for the worker.")
    assert stack.client.get(f"/v1/jobs/{waiting['job_id']}").json()["status"] == "queued"

    r = stack.client.delete(f"/v1/jobs/{long['job_id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # The cancel flag is set: from here the turn makes at most the frame in hand.
    frames_key = stack.keys.job_frames(long["job_id"])
    at_cancel = int(stack.redis.get(frames_key) or 0)
    assert stack.wait_job(waiting["job_id"])["status"] == "succeeded"  # the worker was freed
    final = int(stack.redis.get(frames_key) or 0)
    assert 0 < at_cancel <= final <= at_cancel + 1 < 375, (at_cancel, final)


def test_interrupt_keeps_what_was_spoken_as_context(stack: Stack, engine: Any) -> None:
    """``POST /v1/jobs/{id}/interrupt`` (barge-in): a running turn stops and is stored with what
    it had sent, marked interrupted, and the next turn hears exactly that; a queued turn is
    cancelled; a finished one is a 409."""
    cid = stack.conversation()
    long = stack.say(cid, 1, "Interrupted while it speaks.", max_audio_length_ms=RUNNING_MS)
    queued = stack.say(cid, 0, "Never spoken.")
    r = stack.client.post(f"/v1/jobs/{queued['job_id']}/interrupt")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    _wait_running(stack, long["job_id"])
    r = stack.client.post(f"/v1/jobs/{long['job_id']}/interrupt")
    assert r.status_code == 200 and r.json()["status"] == "running"  # it stops within a frame
    after = stack.say(cid, 0, "I heard you.")
    assert stack.wait_job(long["job_id"])["status"] == "succeeded"
    assert stack.wait_job(after["job_id"])["status"] == "succeeded"

    turn = stack.client.get(f"/v1/conversations/{cid}/turns/{long['id']}").json()
    assert turn["interrupted"] and turn["segments"][0]["status"] == "interrupted"
    assert 0 < turn["frames"] < RUNNING_MS // 80
    audio = stack.client.get(f"/v1/conversations/{cid}/turns/{long['id']}/audio?format=pcm")
    assert len(audio.content) == turn["frames"] * 1920 * 2
    # The next turn's context is the interrupted turn as stored (the queued one was dropped).
    want = expected_codes(engine, stack, cid, [turn], 0, after["text"])
    assert np.array_equal(served_codes(stack, cid, after["id"]), want)
    r = stack.client.post(f"/v1/jobs/{long['job_id']}/interrupt")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    r = stack.client.post(f"/v1/jobs/{uuid.uuid4()}/interrupt")
    assert r.status_code == 404
