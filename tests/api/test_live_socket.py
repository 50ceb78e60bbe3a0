"""The live socket's door and its messages, with no worker: the key (header or ``?api_key=``),
the conversation, the speaker; what a turn's first text stores; bad messages. (Speaking over
the socket: tests/integration/test_live.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from shared.redis_io.live_text import append_text, end_text
from tests.stack import Stack

KEY = "live-key"


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    s = make_stack("sqlite", workers=0, api_keys=KEY)
    s.client.headers["Authorization"] = f"Bearer {KEY}"
    return s


def receive_event(ws: WebSocketTestSession) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(ws.receive_text())
    return got


def refused(stack: Stack, path: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
    """The error event a refused socket gets, and its close code."""
    with stack.client.websocket_connect(path, **kwargs) as ws:
        event = receive_event(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return event, closed.value.code


def test_the_key_the_conversation_and_the_speaker_are_checked(stack: Stack) -> None:
    cid = stack.conversation()
    path = f"/v1/conversations/{cid}/live"
    event, code = refused(stack, path, headers={"Authorization": ""})
    assert (event["type"], event["code"], code) == ("error", "unauthorized", 4401)
    event, code = refused(stack, f"{path}?api_key=wrong", headers={"Authorization": ""})
    assert (event["code"], code) == ("unauthorized", 4401)
    other = "00000000-0000-0000-0000-000000000000"
    event, code = refused(stack, f"/v1/conversations/{other}/live")
    assert (event["code"], code) == ("not_found", 4404)
    event, code = refused(stack, f"{path}?speaker=99")
    assert (event["code"], code) == ("invalid_speaker", 4422)
    # A browser's way: the key in the query.
    with stack.client.websocket_connect(
        f"{path}?api_key={KEY}&speaker=2", headers={"Authorization": ""}
    ) as ws:
        ws.send_text(json.dumps({"type": "text", "text": "Stored at once."}))
        started = receive_event(ws)
    assert started["type"] == "turn.started" and started["index"] == 0
    turn = stack.client.get(f"/v1/conversations/{cid}/turns/{started['turn_id']}").json()
    assert turn["live"] and turn["speaker"] == 2 and turn["segments"] == []


def test_a_turn_is_stored_at_its_first_text_that_is_not_blank(stack: Stack) -> None:
    cid = stack.conversation()
    turns = f"/v1/conversations/{cid}/turns"
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        ws.send_text(json.dumps({"type": "text", "text": "  "}))
        ws.send_text(json.dumps({"type": "text", "text": "x" * 5000, "params": {"seed": 1}}))
        assert receive_event(ws)["code"] == "text_too_long"  # refused: its params are not kept
        ws.send_text(json.dumps({"type": "text", "text": "Hi", "params": {"temperature": 3}}))
        error = receive_event(ws)
        assert error["code"] == "invalid_message" and "temperature" in error["message"]
        assert stack.client.get(turns).json() == []
        ws.send_text(json.dumps({"type": "text", "text": "Hi", "params": {"seed": 5}}))
        started = receive_event(ws)
        assert started["type"] == "turn.started"
        ws.send_text(json.dumps({"type": "text", "text": " there. And", "turn_id": "nope"}))
        assert receive_event(ws)["code"] == "unknown_turn"
        ws.send_text(
            json.dumps({"type": "text", "text": " there. And", "turn_id": started["turn_id"]})
        )
        ws.send_text(json.dumps({"type": "text", "text": " more"}))
    turn = stack.client.get(f"{turns}/{started['turn_id']}").json()
    assert turn["params"]["seed"] == 5 and turn["text"] == "Hi"
    # The socket closed with its turn open: the turn was cancelled (no worker ever ran it).
    job = stack.client.get(f"/v1/jobs/{started['job_id']}").json()
    assert job["status"] == "cancelled"
    stream = stack.redis.xrange(stack.keys.job_text(job["id"]))
    texts = [f[b"text"].decode() for _, f in stream if b"text" in f]
    assert texts == ["Hi there."]  # "And more" never became a sentence: never sent


def test_text_after_its_end_is_refused_and_not_appended(stack: Stack) -> None:
    """The text stream takes no text once it has ended (the worker stopped waiting, or an
    interrupt came): the late text is refused, never lost unseen."""
    key = f"{stack.settings.redis_prefix}:test-live-text"
    assert append_text(stack.redis, key, ["One."])
    assert append_text(stack.redis, key, ["Two."], end=True)
    assert not append_text(stack.redis, key, ["Three."])
    end_text(stack.redis, key)
    assert not append_text(stack.redis, key, [], end=True)
    fields = [f for _, f in stack.redis.xrange(key)]
    assert fields == [{b"text": b"One."}, {b"text": b"Two."}, {b"end": b"1"}, {b"end": b"1"}]


def test_text_past_the_limit_is_refused_and_nothing_is_taken(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack("sqlite", workers=0, max_text_chars=20)
    cid = stack.conversation()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        ws.send_text(json.dumps({"type": "text", "text": "Twelve chars"}))
        assert receive_event(ws)["type"] == "turn.started"
        ws.send_text(json.dumps({"type": "text", "text": " and nine more"}))
        error = receive_event(ws)
        assert error["code"] == "text_too_long" and "the limit is 20" in error["message"]
        ws.send_text(json.dumps({"type": "text", "text": "!"}))
        ws.send_text(json.dumps({"type": "end"}))
    stream = stack.redis.xrange(
        stack.keys.job_text(stack.client.get(f"/v1/conversations/{cid}/turns").json()[0]["job_id"])
    )
    texts = [fields[b"text"].decode() for _, fields in stream if b"text" in fields]
    assert texts == ["Twelve chars!"]
