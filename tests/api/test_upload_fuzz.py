"""Uploads fuzzed with hypothesis through HTTP, the app in-process: any upload is a turn or a
4xx naming the problem, and an upload is judged by its content, never by its declared name or
type. ``decode_upload`` fuzzed alone: tests/unit/test_audio_decode_fuzz.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.audio.containers import SAMPLE_RATE
from tests.audio_fuzz import FUZZ, MAX_DURATION_MS, mutated_audio
from tests.sounds import audio_file, chirp, read
from tests.stack import Stack, database


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("upload-fuzz")
    with database("sqlite", tmp) as url:
        stack = Stack(db_url=url, tmp=tmp, model="unused", max_upload_duration_ms=MAX_DURATION_MS)
        try:
            yield stack
        finally:
            stack.close()
    for leftover in tmp.glob("parley.db*"):
        leftover.unlink()


def _assert_error_shape(r: Any) -> None:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] and body["error"]["message"], body


BOUNDARY = b"parley-fuzz-7f3a9c0e5b21"


def _upload(api: Stack, cid: str, data: bytes, filename: bytes, content_type: bytes) -> Any:
    """A multipart turn written by hand, so the audio part's filename and type can be any bytes
    (a client library would refuse or escape some)."""
    parts = [
        (b'name="speaker"', b"", b"0"),
        (b'name="text"', b"", b"hello"),
        (b'name="audio"; filename="' + filename + b'"', b"Content-Type: " + content_type, data),
    ]
    body = b"".join(
        b"--"
        + BOUNDARY
        + b"\r\nContent-Disposition: form-data; "
        + disposition
        + b"\r\n"
        + (extra + b"\r\n" if extra else b"")
        + b"\r\n"
        + payload
        + b"\r\n"
        for disposition, extra, payload in parts
    )
    return api.client.post(
        f"/v1/conversations/{cid}/turns",
        content=body + b"--" + BOUNDARY + b"--\r\n",
        headers={"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()},
    )


# Any bytes but a line break (which would end the part's header line).
header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(FUZZ, max_examples=100)
@given(
    data=st.one_of(st.binary(max_size=2048), mutated_audio()),
    filename=st.one_of(st.sampled_from([b"", b"x.wav", b"x.mp3"]), header_bytes),
    content_type=st.one_of(
        st.sampled_from([b"audio/wav", b"audio/mpeg", b"image/png", b"application/octet-stream"]),
        header_bytes,
    ),
)
def test_any_upload_is_a_turn_or_a_4xx(
    api: Stack, data: bytes, filename: bytes, content_type: bytes
) -> None:
    cid = api.conversation()
    r = _upload(api, cid, data, filename, content_type)
    event(f"{r.status_code} {r.json().get('error', {}).get('code', '')}")
    assert r.status_code < 500, r.text
    turns = api.client.get(f"/v1/conversations/{cid}/turns").json()
    if r.status_code == 201:
        assert [t["id"] for t in turns] == [r.json()["id"]]
        audio = api.client.get(f"/v1/conversations/{cid}/turns/{r.json()['id']}/audio")
        assert audio.status_code == 200
        samples, rate, channels = read(audio.content)
        assert (rate, channels) == (SAMPLE_RATE, 1) and samples.size > 0
        assert r.json()["duration_ms"] == round(samples.size * 1000 / SAMPLE_RATE)
    else:
        assert 400 <= r.status_code < 500, r.text
        _assert_error_shape(r)
        assert turns == []  # nothing half-written


@pytest.mark.parametrize(
    ("fmt", "filename", "content_type"),
    [
        ("WAV", b"x.mp3", b"image/png"),
        ("FLAC", b"speech.wav", b"text/plain"),
        ("OGG", b"", b"application/pdf"),
        ("MP3", b"notes.txt", b"audio/flac"),
    ],
)
def test_upload_is_judged_by_content(
    api: Stack, fmt: str, filename: bytes, content_type: bytes
) -> None:
    seconds = 1.5
    data = audio_file(chirp(seconds, 44_100), 44_100, fmt)
    cid = api.conversation()
    r = _upload(api, cid, data, filename, content_type)
    assert r.status_code == 201, r.text
    audio = api.client.get(f"/v1/conversations/{cid}/turns/{r.json()['id']}/audio")
    samples, rate, channels = read(audio.content)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    slack_ms = 100 if fmt in ("MP3", "OGG") else 1  # codec padding at the start
    assert abs(r.json()["duration_ms"] - seconds * 1000) <= slack_ms
    assert abs(samples.size - seconds * SAMPLE_RATE) <= slack_ms * SAMPLE_RATE // 1000


def test_garbage_named_and_typed_as_wav_is_refused(api: Stack) -> None:
    cid = api.conversation()
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8))
    r = _upload(api, cid, garbage, b"x.wav", b"audio/wav")
    assert r.status_code == 422, r.text
    _assert_error_shape(r)
    assert r.json()["error"]["code"] == "invalid_audio"
    assert "not audio" in r.json()["error"]["message"]
    assert api.client.get(f"/v1/conversations/{cid}/turns").json() == []


def test_error_names_the_problem_not_an_address(api: Stack) -> None:
    """The message was libsndfile's, with '<_io.BytesIO object at 0x7f…>' in it."""
    cid = api.conversation()
    r = _upload(api, cid, b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20, b"a.wav", b"audio/wav")
    assert r.status_code == 422 and "object at 0x" not in r.json()["error"]["message"], r.text


def test_audio_sent_as_a_text_field_is_named_as_such(api: Stack) -> None:
    """A part without a filename is a text field to multipart parsers: its bytes are gone."""
    cid = api.conversation()
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "hi"},
        files={"audio": (None, audio_file(chirp(0.2), 24_000), "audio/wav")},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "missing_audio"
    assert "filename" in r.json()["error"]["message"]
