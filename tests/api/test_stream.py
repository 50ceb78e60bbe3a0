"""Streaming a turn's audio with keys and no worker: another owner's turn is 404, no key is
401. Streams of turns a real worker speaks: tests/integration/test_stream.py."""

from __future__ import annotations

from collections.abc import Callable

from shared.audio.containers import SAMPLE_RATE
from tests.sounds import audio_file, chirp
from tests.stack import Stack


def stream_path(cid: str, tid: str) -> str:
    return f"/v1/conversations/{cid}/turns/{tid}/stream"


def test_another_owners_turn_is_404(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=0, api_keys="key-a,key-b")
    owner, other = ({"Authorization": f"Bearer {key}"} for key in ("key-a", "key-b"))
    cid = stack.client.post("/v1/conversations", json={}, headers=owner).json()["id"]
    r = stack.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "Mine."},
        files={"audio": ("a.wav", audio_file(chirp(0.2), SAMPLE_RATE), "audio/wav")},
        headers=owner,
    )
    assert r.status_code == 201, r.text
    path = stream_path(cid, r.json()["id"])
    assert stack.client.get(path, headers=owner).status_code == 200
    r = stack.client.get(path, headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert stack.client.get(path).status_code == 401
