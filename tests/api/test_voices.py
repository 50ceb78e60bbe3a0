"""Named voices over HTTP with no worker: list, get, delete and owners; bad voices and bindings
are refused. Voices encoded and spoken by a worker: tests/integration/test_voices.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared.db.models import Conversation, Voice
from tests.conftest import DB_KINDS
from tests.sounds import audio_file, chirp, read
from tests.stack import Stack, database
from tests.voices import post_voice


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
