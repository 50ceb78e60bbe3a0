"""Bad input gets a 4xx with a JSON error naming the problem, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sounds import audio_file, chirp
from tests.stack import Stack


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from tests.stack import database

    tmp = tmp_path_factory.mktemp("bad-input")
    with database(request.param, tmp) as url:
        stack = Stack(db_url=url, tmp=tmp, model="unused", max_audio_length_ms=20_000)
        try:
            yield stack
        finally:
            stack.close()


def _state(api: Stack, cid: str) -> tuple[int, list[Any]]:
    conv = api.client.get(f"/v1/conversations/{cid}").json()
    return conv["turn_count"], api.client.get(f"/v1/conversations/{cid}/turns").json()


def _assert_error(r: Any, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if code:
        assert body["error"]["code"] == code, body


BAD_TURNS: list[tuple[dict[str, Any], str]] = [
    ({"speaker": 0, "text": ""}, "invalid_input"),
    ({"speaker": 0, "text": "   \n "}, "empty_text"),
    ({"speaker": 0, "text": "x" * 4097}, "text_too_long"),
    ({"speaker": -1, "text": "hi"}, "invalid_input"),
    ({"speaker": 99, "text": "hi"}, "invalid_speaker"),
    ({"speaker": "zero", "text": "hi"}, "invalid_input"),
    ({"text": "hi"}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "params": {"temperature": -0.1}}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "params": {"temperature": 9}}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "params": {"top_k": 0}}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "params": {"seed": -5}}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "params": {"max_audio_length_ms": 10}}, "invalid_input"),
    (
        {"speaker": 0, "text": "hi", "params": {"max_audio_length_ms": 999_999}},
        "max_audio_length_ms_too_large",
    ),
    ({"speaker": 0, "text": "hi", "params": {"tempreature": 0.5}}, "invalid_input"),
    ({"speaker": 0, "text": "hi", "colour": "blue"}, "invalid_input"),
]


@pytest.mark.parametrize(("body", "code"), BAD_TURNS)
def test_bad_generated_turn(api: Stack, body: dict[str, Any], code: str) -> None:
    cid = api.conversation()
    before = _state(api, cid)
    r = api.client.post(f"/v1/conversations/{cid}/turns", json=body)
    _assert_error(r, 422, code)
    assert _state(api, cid) == before == (0, [])


def test_malformed_json_and_wrong_content_type(api: Stack) -> None:
    cid = api.conversation()
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    _assert_error(r, 422)
    r = api.client.post(
        f"/v1/conversations/{cid}/turns", content=b"hi", headers={"content-type": "text/plain"}
    )
    _assert_error(r, 422, "unsupported_media_type")
    assert _state(api, cid) == (0, [])


BAD_UPLOADS: list[tuple[Callable[[], bytes], str, str]] = [
    (lambda: b"", "a.wav", "invalid_audio"),
    (lambda: b"this is plain text, not a wave file at all", "speech.wav", "invalid_audio"),
    (lambda: bytes(range(256)) * 64, "speech.mp3", "invalid_audio"),
    (lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20, "x.wav", "invalid_audio"),
]


@pytest.mark.parametrize(("make", "name", "code"), BAD_UPLOADS)
def test_bad_upload(api: Stack, make: Callable[[], bytes], name: str, code: str) -> None:
    cid = api.conversation()
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "hello"},
        files={"audio": (name, make(), "audio/wav")},
    )
    _assert_error(r, 422, code)
    assert _state(api, cid) == (0, [])


def test_upload_missing_fields(api: Stack) -> None:
    cid = api.conversation()
    wav = audio_file(chirp(0.5), 24_000)
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0"},
        files={"audio": ("a.wav", wav, "audio/wav")},
    )
    _assert_error(r, 422, "empty_text")
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "x", "text": "hi"},
        files={"audio": ("a.wav", wav, "audio/wav")},
    )
    _assert_error(r, 422, "invalid_speaker")
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "hi"},
        files={"other": ("a", b"x")},
    )
    _assert_error(r, 422, "missing_audio")
    assert _state(api, cid) == (0, [])


def test_unknown_ids_are_404(api: Stack) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    _assert_error(api.client.get(f"/v1/conversations/{missing}"), 404, "not_found")
    _assert_error(
        api.client.post(f"/v1/conversations/{missing}/turns", json={"speaker": 0, "text": "hi"}),
        404,
        "not_found",
    )
    _assert_error(api.client.get(f"/v1/jobs/{missing}"), 404, "not_found")
    _assert_error(api.client.delete(f"/v1/jobs/{missing}"), 404, "not_found")
    _assert_error(api.client.delete(f"/v1/conversations/{missing}"), 404, "not_found")
    _assert_error(api.client.get("/v1/nowhere"), 404, "not_found")


def test_bad_conversation_bodies(api: Stack) -> None:
    _assert_error(api.client.post("/v1/conversations", json={"max_context_turns": -1}), 422)
    _assert_error(
        api.client.post("/v1/conversations", json={"max_context_turns": 10_000}),
        422,
        "max_context_turns_too_large",
    )
    _assert_error(
        api.client.post("/v1/conversations", json={"metadata": {"k": "v" * 20_000}}),
        422,
        "metadata_too_large",
    )
    _assert_error(api.client.post("/v1/conversations", json={"metadata": "nope"}), 422)


def test_audio_of_a_turn_not_yet_generated_is_409(api: Stack) -> None:
    cid = api.conversation()
    turn = api.say(cid, 0, "hello")  # no worker runs in this module: it stays queued
    r = api.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/audio")
    _assert_error(r, 409, "no_audio")
    _assert_error(api.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/codes"), 409)
    r = api.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/audio?format=ogg")
    _assert_error(r, 422)
