"""The OpenAI-compatible speech endpoint with keys and no worker: another owner's conversation
is 404, no key is 401. With a real worker: tests/integration/test_openai_speech.py."""

from __future__ import annotations

from collections.abc import Callable

from tests.stack import Stack


def test_another_owners_conversation_is_404(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("postgresql", workers=0, api_keys="key-a,key-b")
    r = stack.client.post("/v1/conversations", json={}, headers={"Authorization": "Bearer key-a"})
    cid = r.json()["id"]
    body = {"model": "tts-1", "voice": "alloy", "input": "Not yours."}
    r = stack.client.post(
        "/v1/audio/speech",
        json=body,
        headers={"Authorization": "Bearer key-b", "X-Conversation-ID": cid},
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = stack.client.post("/v1/audio/speech", json=body)
    assert r.status_code == 401
    r = stack.client.get("/v1/models")
    assert r.status_code == 401
