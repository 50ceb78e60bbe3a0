"""The CSM sidecar endpoint, ``POST /v1/csm/generate``, with no worker: a request that waits for
its turn gives up after ``sync_wait_s`` with a 504 and cleans up. With a real worker:
tests/integration/test_csm_sidecar.py."""

from __future__ import annotations

from typing import Any

from tests.row_counts import counts

TEXT, SPEAKER = "I am well, thank you for asking.", 0


def test_no_worker_in_time_is_504_and_cleans_up(make_stack: Any) -> None:
    """With no worker, a request that answers with the turn gives up after ``sync_wait_s``: a
    one-off turn is removed; a turn of a kept conversation stays queued, to be spoken later."""
    idle = make_stack("sqlite", workers=0, sync_wait_s=1)
    before = counts(idle)
    r = idle.client.post("/v1/csm/generate", json={"text": TEXT, "speaker": 0})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert "sync_wait_s" in r.json()["error"]["message"]
    assert counts(idle) == before  # the one-off conversation, its turn and job are gone

    cid = idle.conversation()
    r = idle.client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "wav"},
        headers={"X-Conversation-ID": cid},
    )
    assert r.status_code == 504, r.text
    assert cid in r.json()["error"]["message"]
    turns = idle.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [(t["text"], t["status"]) for t in turns] == [(TEXT, "queued")]
