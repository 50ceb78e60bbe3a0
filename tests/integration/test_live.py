"""The live socket (``/v1/conversations/{cid}/live``) against a real worker on the tiny
checkpoint: text in as it is written, audio out as it is spoken, barge-in, several turns on one
socket, a socket dropped mid-turn."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import WebSocketTestSession

from shared.redis_io.context import ContextStore
from tests.stack import RUNNING_MS, Stack, running_stack, wait_until

SHORT = {"max_audio_length_ms": 240, "temperature": 0}  # 3 frames a segment
LONG = {"max_audio_length_ms": RUNNING_MS, "temperature": 0}  # runs until stopped


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("live")
    with running_stack("sqlite", tmp, tiny_model_dir) as s:
        yield s


@dataclass
class Heard:
    """What the socket sent, in order: audio bytes and events."""

    audio: bytearray = field(default_factory=bytearray)
    events: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "audio" or an event's type

    def take(self, ws: WebSocketTestSession) -> dict[str, Any] | None:
        """One message; the event, or None for audio."""
        message = ws.receive()
        if message.get("bytes") is not None:
            self.audio.extend(message["bytes"])
            self.order.append("audio")
            return None
        got: dict[str, Any] = json.loads(message["text"])
        self.events.append(got)
        self.order.append(got["type"])
        return got

    def until(self, ws: WebSocketTestSession, kind: str) -> dict[str, Any]:
        while True:
            got = self.take(ws)
            if got is not None and got["type"] == kind:
                return got

    def until_audio(self, ws: WebSocketTestSession) -> None:
        while self.take(ws) is not None:
            pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def send(ws: WebSocketTestSession, **message: Any) -> None:
    ws.send_text(json.dumps(message))


def stored_pcm(stack: Stack, cid: str, tid: str) -> bytes:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=pcm")
    assert r.status_code == 200, r.text
    return r.content


def get_turn(stack: Stack, cid: str, tid: str) -> dict[str, Any]:
    return dict(stack.client.get(f"/v1/conversations/{cid}/turns/{tid}").json())


def test_text_in_audio_out_speaking_before_the_text_is_whole(stack: Stack) -> None:
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live?speaker=1") as ws:
        send(ws, type="text", text="Hello there", params=SHORT)
        started = heard.until(ws, "turn.started")  # stored at its first text
        send(ws, type="text", text=". How are")
        # The first sentence is complete: its audio comes while the turn's text is not.
        heard.until_audio(ws)
        first = heard.until(ws, "segment.done")
        assert first["index"] == 0 and first["text"] == "Hello there." and first["frames"] == 3
        send(ws, type="text", text=" you today?")
        send(ws, type="end")
        done = heard.until(ws, "turn.done")
    tid = started["turn_id"]
    assert done["turn_id"] == tid and done["status"] == "succeeded" and not done["interrupted"]
    assert [e["text"] for e in heard.of("segment.done")] == ["Hello there.", "How are you today?"]
    # Each segment's audio comes before its segment.done, and all before turn.done.
    assert heard.order[heard.order.index("segment.done") - 1] == "audio"
    assert heard.order[-1] == "turn.done"
    assert bytes(heard.audio) == stored_pcm(stack, cid, tid)  # streamed = stored
    turn = get_turn(stack, cid, tid)
    assert turn["text"] == "Hello there. How are you today?" and turn["live"] is True
    assert turn["speaker"] == 1 and turn["frames"] == 6
    assert [s["status"] for s in turn["segments"]] == ["truncated", "truncated"]


def test_several_turns_on_one_socket_keep_their_order(stack: Stack) -> None:
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        for n in range(3):
            send(ws, type="text", text=f"Turn number {n}.", params=SHORT)
            send(ws, type="end")
        dones = [heard.until(ws, "turn.done") for _ in range(3)]
    started = heard.of("turn.started")
    assert [e["index"] for e in started] == [0, 1, 2]
    assert [d["turn_id"] for d in dones] == [s["turn_id"] for s in started]
    audio = b"".join(stored_pcm(stack, cid, d["turn_id"]) for d in dones)
    assert bytes(heard.audio) == audio


def test_cancel_keeps_what_was_spoken_as_context_for_the_next_turn(stack: Stack) -> None:
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="This turn runs until the caller barges in. ", params=LONG)
        send(ws, type="text", text="This sentence is never spoken. ")
        first = heard.until(ws, "turn.started")
        heard.until_audio(ws)
        send(ws, type="cancel")
        done = heard.until(ws, "turn.done")
        # The socket goes on: the next turn hears the interrupted one.
        send(ws, type="text", text="Sorry, go ahead.", params=SHORT)
        send(ws, type="end")
        second = heard.until(ws, "turn.started")
        assert heard.until(ws, "turn.done")["status"] == "succeeded"
    tid = first["turn_id"]
    assert done["turn_id"] == tid and done["status"] == "succeeded" and done["interrupted"]
    turn = get_turn(stack, cid, tid)
    statuses = [s["status"] for s in turn["segments"]]
    assert statuses[0] == "interrupted" and turn["interrupted"] and 0 < turn["frames"] < 1875
    assert set(statuses[1:]) <= {"dropped"}
    stored = stored_pcm(stack, cid, tid)
    assert len(stored) == turn["frames"] * 1920 * 2
    # Every byte the worker streamed before it stopped reached the socket, and only those.
    assert bytes(heard.audio).startswith(stored)
    # The worker builds the next turn's context from SQL/Redis like this: the interrupted
    # turn is there, with exactly its spoken audio.
    store = ContextStore(stack.redis, stack.settings.redis_prefix)
    with stack.app.state.parley.reads() as session:
        context = store.candidates(session, cid, before_index=second["index"], limit=10)
    assert [e.turn_id for e in context] == [tid]
    pieces = context[0].pieces()
    assert [text for text, _ in pieces] == ["This turn runs until the caller barges in."]
    assert pieces[0][1].shape[0] == turn["frames"]


def test_a_dropped_socket_ends_its_turn_as_if_cancelled(stack: Stack) -> None:
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="The caller hangs up during this. ", params=LONG)
        started = heard.until(ws, "turn.started")
        heard.until_audio(ws)
    job = stack.wait_job(started["job_id"], timeout=60)
    assert job["status"] == "succeeded"  # what was spoken is kept, nothing half written
    turn = get_turn(stack, cid, started["turn_id"])
    assert turn["interrupted"] and 0 < turn["frames"] < 1875
    assert len(stored_pcm(stack, cid, started["turn_id"])) == turn["frames"] * 3840
    # The conversation goes on at once.
    after = stack.say(cid, 0, "Next.")
    assert stack.wait_job(after["job_id"])["status"] == "succeeded"


def test_a_dropped_socket_cancels_its_turn_still_queued(stack: Stack) -> None:
    """A live turn waiting behind another turn has spoken nothing: it is cancelled."""
    cid = stack.conversation()
    ahead = stack.say(cid, 0, "A REST turn ahead of it.", max_audio_length_ms=RUNNING_MS)
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="Waiting for my turn. ", params=SHORT)
        started = heard.until(ws, "turn.started")
        assert stack.client.get(f"/v1/jobs/{started['job_id']}").json()["status"] == "queued"
    job = stack.wait_job(started["job_id"], timeout=60)
    assert job["status"] == "cancelled", job["error"]
    turn = get_turn(stack, cid, started["turn_id"])
    assert turn["status"] == "cancelled" and turn["audio_url"] is None
    stack.client.delete(f"/v1/jobs/{ahead['job_id']}")


def test_bad_messages_get_an_error_and_the_socket_stays_usable(stack: Stack) -> None:
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        ws.send_text("{not json")
        assert heard.until(ws, "error")["code"] == "invalid_message"
        send(ws, type="shout", text="hi")
        assert heard.until(ws, "error")["code"] == "invalid_message"
        ws.send_bytes(b"\x00\x01")
        assert heard.until(ws, "error")["code"] == "binary_not_accepted"
        send(ws, type="end")
        assert heard.until(ws, "error")["code"] == "no_turn"
        send(ws, type="text", text="x" * (stack.settings.max_text_chars + 1))
        error = heard.until(ws, "error")
        assert (
            error["code"] == "text_too_long"
            and str(stack.settings.max_text_chars) in (error["message"])
        )
        send(ws, type="text", text="   ")
        send(ws, type="end")
        assert heard.until(ws, "error")["code"] == "empty_text"
        send(ws, type="text", text="A good turn.", params=SHORT)
        send(ws, type="end")
        tid = heard.until(ws, "turn.started")["turn_id"]
        send(ws, type="text", text="More for it.", turn_id=tid)
        assert heard.until(ws, "error")["code"] == "turn_ended"
        done = heard.until(ws, "turn.done")
    assert done["status"] == "succeeded" and done["turn_id"] == tid
    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [t["text"] for t in turns] == ["A good turn."]  # nothing else was stored


def test_live_turns_wait_their_place_behind_rest_turns(stack: Stack) -> None:
    cid = stack.conversation()
    rest = stack.say(cid, 0, "A REST turn first.")
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live?speaker=1") as ws:
        send(ws, type="text", text="Then the live one.", params=SHORT)
        send(ws, type="end")
        started = heard.until(ws, "turn.started")
        heard.until(ws, "turn.done")
    assert started["index"] == rest["index"] + 1
    first = stack.client.get(f"/v1/jobs/{rest['job_id']}").json()
    second = stack.client.get(f"/v1/jobs/{started['job_id']}").json()
    assert first["status"] == second["status"] == "succeeded"
    assert first["finished_at"] <= second["started_at"]


def test_a_turn_whose_client_goes_quiet_ends(make_stack: Callable[..., Stack]) -> None:
    """A turn whose client sends nothing for live_text_idle_s ends with what was spoken (failed
    live_text_idle when nothing was); the text still pending is said not spoken, and the next
    text opens the next turn."""
    stack = make_stack("sqlite", live_text_idle_s=1)
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="No sentence end here", params=SHORT)
        nothing = heard.until(ws, "turn.done")
        assert heard.until(ws, "error")["code"] == "turn_ended"
        send(ws, type="text", text="This one is spoken. But this one", params=SHORT)
        quiet = heard.until(ws, "turn.done")
        error = heard.until(ws, "error")
        send(ws, type="text", text="A new turn.", params=SHORT)
        send(ws, type="end")
        after = heard.until(ws, "turn.done")
    assert nothing["status"] == "failed" and nothing["error"]["code"] == "live_text_idle"
    assert quiet["status"] == "succeeded" and quiet["frames"] == 3
    assert quiet["text"] == "This one is spoken."
    assert error["code"] == "turn_ended" and "But this one" in error["message"]
    assert after["status"] == "succeeded" and after["text"] == "A new turn."


def test_a_dropped_socket_before_any_audio_cancels_its_turn(stack: Stack) -> None:
    """A running turn whose text never completed a sentence has spoken nothing: cancelled."""
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="No sentence end here", params=LONG)
        started = heard.until(ws, "turn.started")
        wait_until(
            lambda: stack.client.get(f"/v1/jobs/{started['job_id']}").json()["status"] == "running",
            timeout=30,
            what="the live turn to start",
        )
    job = stack.wait_job(started["job_id"], timeout=60)
    assert job["status"] == "cancelled", job["error"]
    turn = get_turn(stack, cid, started["turn_id"])
    assert turn["status"] == "cancelled" and turn["audio_url"] is None


def test_a_turn_whose_worker_dies_is_done_with_worker_lost(
    make_stack: Callable[..., Stack],
) -> None:
    """The socket hears what the dead worker sent, then turn.done says worker_lost (recovery
    runs the turn again later, as for a REST turn; the socket stays usable)."""
    stack = make_stack("sqlite")  # a stack of its own: its worker is killed
    cid = stack.conversation()
    heard = Heard()
    with stack.client.websocket_connect(f"/v1/conversations/{cid}/live") as ws:
        send(ws, type="text", text="A turn whose worker dies. ", params=LONG)
        send(ws, type="end")
        started = heard.until(ws, "turn.started")
        heard.until_audio(ws)
        stack.workers[0].kill()
        done = heard.until(ws, "turn.done")
        send(ws, type="end")
        assert heard.until(ws, "error")["code"] == "no_turn"  # still answering
    assert done["turn_id"] == started["turn_id"] and done["status"] == "running"
    assert done["error"]["code"] == "worker_lost"
    assert 0 < len(heard.audio) < RUNNING_MS // 80 * 3840
