"""Odd input the fuzzers found (test_schema_fuzz.py, test_upload_fuzz.py), each as a
small explicit example: a 4xx naming the problem, never a 5xx, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.sounds import audio_file, chirp
from tests.stack import Stack, database

NUL_ID = "0000\x00"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("odd-input")
    with database(request.param, tmp) as url:
        stack = Stack(db_url=url, tmp=tmp, model="unused")
        try:
            yield stack
        finally:
            stack.close()


def _assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    assert body["error"]["code"] == code, body


def _turn_count(api: Stack, cid: str) -> int:
    return int(api.client.get(f"/v1/conversations/{cid}").json()["turn_count"])


@pytest.mark.parametrize("speaker", ["²", "--5", "1" * 5000, "١", "+-1", "0x1"])
def test_multipart_speaker_must_be_ascii_digits(api: Stack, speaker: str) -> None:
    """int() took '²' for a digit and then failed, refused 5000 digits, read '--5': all 500."""
    cid = api.conversation()
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": speaker, "text": "hi"},
        files={"audio": ("a.wav", audio_file(chirp(0.2), 24_000), "audio/wav")},
    )
    _assert_error(r, 422, "invalid_speaker")
    assert _turn_count(api, cid) == 0


def test_text_with_nul_is_refused(api: Stack) -> None:
    """PostgreSQL cannot store NUL in text (a 500 there); SQLite kept it. Now 422 on both."""
    cid = api.conversation()
    r = api.client.post(f"/v1/conversations/{cid}/turns", json={"speaker": 0, "text": "a\x00b"})
    _assert_error(r, 422, "invalid_text")
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "a\x00b"},
        files={"audio": ("a.wav", audio_file(chirp(0.2), 24_000), "audio/wav")},
    )
    _assert_error(r, 422, "invalid_text")
    assert _turn_count(api, cid) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"metadata": {"a": NaN}}',
        b'{"metadata": {"a": [Infinity]}}',
        b'{"metadata": {"a": {"b": -Infinity}}}',
        b'{"metadata": {"a": "\\ud800"}}',
        b'{"metadata": {"\\udfff": 1}}',
    ],
)
def test_metadata_must_be_plain_json(api: Stack, raw: bytes) -> None:
    """NaN and Infinity (PostgreSQL's json refused them: 500; SQLite turned them into null) and
    lone surrogates (they cannot be written back as UTF-8: 500 on both)."""
    r = api.client.post(
        "/v1/conversations", content=raw, headers={"content-type": "application/json"}
    )
    _assert_error(r, 422, "invalid_input")
    assert "metadata" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/conversations/{bad}"),
        ("DELETE", "/v1/conversations/{bad}"),
        ("GET", "/v1/conversations/{bad}/turns"),
        ("GET", "/v1/conversations/{cid}/turns/{bad}"),
        ("GET", "/v1/conversations/{cid}/turns/{bad}/audio"),
        ("GET", "/v1/conversations/{cid}/turns/{bad}/codes"),
        ("GET", "/v1/conversations/{cid}/turns/{bad}/stream"),
        ("GET", "/v1/jobs/{bad}"),
        ("DELETE", "/v1/jobs/{bad}"),
    ],
)
def test_ids_that_cannot_exist_are_404(api: Stack, method: str, path: str) -> None:
    """A NUL in a path id reached PostgreSQL, which cannot compare it: 500."""
    cid = api.conversation()
    url = path.format(cid=cid, bad="0000%00")
    _assert_error(api.client.request(method, url), 404, "not_found")


def test_post_turn_to_an_id_that_cannot_exist_is_404(api: Stack) -> None:
    r = api.client.post("/v1/conversations/0000%00/turns", json={"speaker": 0, "text": "hi"})
    _assert_error(r, 404, "not_found")
    r = api.client.post(
        "/v1/conversations/0000%00/turns",
        data={"speaker": "0", "text": "hi"},
        files={"audio": ("a.wav", audio_file(chirp(0.2), 24_000), "audio/wav")},
    )
    _assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/conversations", {"max_context_turns": True}),
        ("/v1/conversations", {"max_context_turns": "5"}),
        ("/v1/conversations", {"max_context_turns": 5.0}),
        ("turns", {"speaker": True, "text": "hi"}),
        ("turns", {"speaker": "0", "text": "hi"}),
        ("turns", {"speaker": 0, "text": "hi", "params": {"top_k": 5.0}}),
        ("turns", {"speaker": 0, "text": "hi", "params": {"temperature": "0.5"}}),
    ],
)
def test_json_numbers_are_numbers(api: Stack, path: str, body: dict[str, Any]) -> None:
    """The schema says integer: true, "5" and 5.0 were taken (schemathesis' negative data)."""
    cid = api.conversation()
    url = f"/v1/conversations/{cid}/turns" if path == "turns" else path
    _assert_error(api.client.post(url, json=body), 422, "invalid_input")
    assert _turn_count(api, cid) == 0


def test_an_integer_is_a_number(api: Stack) -> None:
    cid = api.conversation(max_context_turns=3)
    turn = api.say(cid, 0, "hi", temperature=1, top_k=7)
    assert turn["params"]["temperature"] == 1.0 and turn["params"]["top_k"] == 7


def test_timestamps_carry_their_offset(api: Stack) -> None:
    """SQLite hands timestamps back naive: a re-read row said "2026-01-01T10:00:00", not a
    date-time by the schema (RFC 3339), and not the value the create answer gave."""
    r = api.client.post("/v1/conversations", json={})
    created = r.json()
    cid = created["id"]
    turn = api.say(cid, 0, "hi")
    job = api.client.delete(f"/v1/jobs/{turn['job_id']}").json()
    again = [
        (created["created_at"], api.client.get(f"/v1/conversations/{cid}").json()["created_at"]),
        (
            turn["created_at"],
            api.client.get(f"/v1/conversations/{cid}/turns").json()[0]["created_at"],
        ),
        (job["finished_at"], api.client.get(f"/v1/jobs/{turn['job_id']}").json()["finished_at"]),
    ]
    for first, reread in again:
        assert datetime.fromisoformat(reread).utcoffset() is not None, reread
        assert datetime.fromisoformat(first) == datetime.fromisoformat(reread)
