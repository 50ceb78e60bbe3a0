"""The OpenAI-compatible speech endpoint, driven by the official ``openai`` client against a live
uvicorn, with a real worker on the tiny checkpoint: every format decodes to the turn's length
(within each codec's known padding), streaming by chunks and by server-sent events carries
exactly the stored audio, seeds and sampling fields pass through ``extra_body``, a conversation
named by ``X-Conversation-ID`` speaks each turn with the earlier ones as context, one-off
requests leave nothing behind, and the caller's mistakes are 4xx naming the problem."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI
from sqlalchemy import func, select

from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE
from shared.audio.tempo import stretch
from shared.db.models import Conversation, Job, JobStatus
from tests.decoding import assert_length, decoded_length
from tests.expected import expected_codes, served_codes
from tests.http_server import serve
from tests.stack import RUNNING_MS, Stack, running_stack

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
MEDIA = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SHORT = {"temperature": 0, "max_audio_length_ms": 800}  # greedy, at most 10 frames
NEW = {"X-Conversation-ID": "new"}  # a conversation that is kept, so its turn can be read
LONG_MS = 30_000  # 375 frames: runs for about a second or more on the tiny model


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("speech-sqlite")
    with running_stack("sqlite", tmp, tiny_model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server}/v1", api_key="sk-anything", max_retries=0) as c:
        yield c


def speak(client: OpenAI, text: str, **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    """One speech request through the SDK: (body, headers)."""
    kwargs.setdefault("model", "tts-1")
    kwargs.setdefault("voice", "alloy")
    extra = {**SHORT, **kwargs.pop("extra_body", {})}
    raw = client.audio.speech.with_raw_response.create(input=text, extra_body=extra, **kwargs)
    return raw.content, dict(raw.headers)


def turn_of(stack: Stack, headers: dict[str, str]) -> dict[str, Any]:
    cid, tid = headers["x-conversation-id"], headers["x-conversation-turn"]
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}")
    assert r.status_code == 200, r.text
    turn = dict(r.json())
    assert turn["status"] == "succeeded" and turn["frames"] > 0, turn
    return turn


def stored_pcm(stack: Stack, turn: dict[str, Any]) -> bytes:
    r = stack.client.get(
        f"/v1/conversations/{turn['conversation_id']}/turns/{turn['id']}/audio",
        params={"format": "flac"},
    )
    samples, rate = sf.read(io.BytesIO(r.content), dtype="int16")
    assert rate == SAMPLE_RATE
    return np.asarray(samples, dtype="<i2").tobytes()


def sse_events(lines: Iterator[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]


def job_row_gone(stack: Stack, job_id: str) -> bool:
    with stack.app.state.parley.reads() as session:
        return session.get(Job, job_id) is None


def conversations(stack: Stack) -> int:
    with stack.app.state.parley.reads() as session:
        return int(session.scalar(select(func.count()).select_from(Conversation)) or 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_whole_file(stack: Stack, client: OpenAI, fmt: str) -> None:
    data, headers = speak(client, "Every format decodes.", response_format=fmt, extra_headers=NEW)
    assert headers["content-type"] == MEDIA[fmt]
    turn = turn_of(stack, headers)
    n = turn["frames"] * FRAME_SAMPLES
    assert_length(data, fmt, n, streamed=False)
    if fmt in ("wav", "flac"):  # lossless: the stored samples themselves
        samples, _ = sf.read(io.BytesIO(data), dtype="int16")
        assert np.asarray(samples, dtype="<i2").tobytes() == stored_pcm(stack, turn)
    if fmt == "pcm":
        assert data == stored_pcm(stack, turn)
        assert headers["x-sample-rate"] == "24000"


def test_default_format_is_mp3(stack: Stack, client: OpenAI) -> None:
    data, headers = speak(client, "No format given.", extra_headers=NEW)
    assert headers["content-type"] == "audio/mpeg"
    assert_length(data, "mp3", turn_of(stack, headers)["frames"] * FRAME_SAMPLES, streamed=False)


def test_streamed_pcm_is_the_stored_audio(stack: Stack, client: OpenAI) -> None:
    # OpenAI's streaming call as its docs show it: without stream_format the file comes whole...
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="nova",
        input="Streamed as raw samples.",
        response_format="pcm",
        extra_headers=NEW,
        extra_body=SHORT,
    ) as r:
        body = b"".join(r.iter_bytes())
        headers = dict(r.headers)
    assert body == stored_pcm(stack, turn_of(stack, headers))
    # ...with stream_format="audio" it comes as it is generated, chunk by chunk.
    with client.audio.speech.with_streaming_response.create(
        model="csm-1b",
        voice="nova",
        input="A long turn, heard while it is spoken.",
        response_format="pcm",
        stream_format="audio",
        extra_headers=NEW,
        extra_body={"temperature": 0, "max_audio_length_ms": LONG_MS},
    ) as r:
        cid, tid = r.headers["x-conversation-id"], r.headers["x-conversation-turn"]
        job_id = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}").json()["job_id"]
        chunks = r.iter_bytes()
        first = next(chunks)
        at_first = stack.client.get(f"/v1/jobs/{job_id}").json()
        body = first + b"".join(chunks)
    turn = turn_of(stack, {"x-conversation-id": cid, "x-conversation-turn": tid})
    assert at_first["status"] == "running", at_first
    assert at_first["progress"]["frames"] < turn["frames"]
    assert body == stored_pcm(stack, turn)


def test_every_format_streams(stack: Stack, client: OpenAI) -> None:
    for fmt in FORMATS:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="echo",
            input=f"Streamed as {fmt}.",
            response_format=fmt,
            stream_format="audio",
            extra_headers=NEW,
            extra_body=SHORT,
        ) as r:
            assert r.headers["content-type"] == MEDIA[fmt]
            body = b"".join(r.iter_bytes())
            headers = dict(r.headers)
        turn = turn_of(stack, headers)
        assert_length(body, fmt, turn["frames"] * FRAME_SAMPLES, streamed=True)
        if fmt == "wav":  # the open-length header, then exactly the stored samples
            assert body[4:8] == b"\xff\xff\xff\xff" and body[44:] == stored_pcm(stack, turn)


def test_server_sent_events(stack: Stack, client: OpenAI) -> None:
    text = "Events, then done."
    for fmt in ("pcm", "mp3"):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="coral",
            input=text,
            response_format=fmt,
            stream_format="sse",
            extra_headers=NEW,
            extra_body=SHORT,
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.iter_lines())
            headers = dict(r.headers)
        turn = turn_of(stack, headers)
        *deltas, done = events
        assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
        audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
        if fmt == "pcm":
            assert audio == stored_pcm(stack, turn)
        assert_length(audio, fmt, turn["frames"] * FRAME_SAMPLES, streamed=True)
        assert done == {
            "type": "speech.audio.done",
            "usage": {
                "input_tokens": len(text),
                "output_tokens": turn["frames"],
                "total_tokens": len(text) + turn["frames"],
            },
        }


def test_extra_body_seed_and_sampling(stack: Stack, client: OpenAI) -> None:
    sampled = {"temperature": 0.9, "top_k": 20, "max_audio_length_ms": 800}
    one_off = [
        speak(client, "Same seed, same voice.", response_format="pcm", extra_body=body)[0]
        for body in ({**sampled, "seed": 7}, {**sampled, "seed": 7}, {**sampled, "seed": 8})
    ]
    assert one_off[0] == one_off[1]
    assert one_off[0] != one_off[2]
    # The fields reach the turn, and the kept turn speaks what the one-off spoke.
    data, headers = speak(
        client,
        "Same seed, same voice.",
        response_format="pcm",
        extra_headers=NEW,
        extra_body={**sampled, "seed": 7},
    )
    turn = turn_of(stack, headers)
    assert turn["params"] == {**sampled, "seed": 7}
    assert data == one_off[0]


def test_one_off_requests_leave_nothing(stack: Stack, client: OpenAI) -> None:
    before = conversations(stack)
    data, headers = speak(client, "Gone once answered.", response_format="wav")
    assert "x-conversation-id" not in headers and "x-conversation-turn" not in headers
    assert decoded_length(data, "wav") % FRAME_SAMPLES == 0 and len(data) > 44
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="ash",
        input="Gone once streamed.",
        response_format="pcm",
        stream_format="audio",
        extra_body=SHORT,
    ) as r:
        assert len(b"".join(r.iter_bytes())) % (2 * FRAME_SAMPLES) == 0
    wait_for(lambda: conversations(stack) == before, "one-off conversations removed")


def test_a_caller_that_leaves_mid_stream_stops_the_turn(stack: Stack, client: OpenAI) -> None:
    before = conversations(stack)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="sage",
        input="Nobody hears the end of this.",
        response_format="pcm",
        stream_format="audio",
        extra_body={"temperature": 0, "max_audio_length_ms": RUNNING_MS},
    ) as r:
        next(r.iter_bytes())
        with stack.app.state.parley.reads() as session:
            job_id = session.scalar(select(Job.id).where(Job.status == JobStatus.RUNNING))
    assert job_id is not None
    # The one-off conversation is removed and its job cancelled: the worker stops the turn
    # (1875 frames at most) within a frame and is free again. The rows go first (committed),
    # then the cancel flag is set; and the count of conversations alone can come back to
    # `before` while an earlier test's one-off conversation is still being removed.
    wait_for(lambda: job_row_gone(stack, job_id), "the abandoned conversation removed")
    wait_for(lambda: conversations(stack) == before, "every one-off conversation removed")
    wait_for(lambda: stack.redis.exists(stack.keys.job_cancel(job_id)) == 1, "the cancel flag")
    time.sleep(1.0)
    frames = int(stack.redis.get(stack.keys.job_frames(job_id)) or 0)
    time.sleep(0.5)
    assert int(stack.redis.get(stack.keys.job_frames(job_id)) or 0) == frames
    assert 0 < frames < RUNNING_MS // 80
    data, _ = speak(client, "The worker is free.", response_format="pcm")
    assert data


def test_speed_stretches_the_audio(stack: Stack, client: OpenAI) -> None:
    body = {"temperature": 0, "max_audio_length_ms": 1600}
    data, headers = speak(
        client,
        "Twice as fast.",
        response_format="pcm",
        speed=2.0,
        extra_headers=NEW,
        extra_body=body,
    )
    stored = np.frombuffer(stored_pcm(stack, turn_of(stack, headers)), dtype="<i2")
    got = np.frombuffer(data, dtype="<i2")
    assert np.array_equal(got, stretch(stored, 2.0))  # FFmpeg's atempo, deterministic
    assert abs(len(got) - len(stored) / 2) <= 3200  # atempo's window at the two ends
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="Twice as fast.",
        response_format="pcm",
        speed=0.5,
        stream_format="audio",
        extra_body=body,
    ) as r:
        slow = b"".join(r.iter_bytes())
    assert abs(len(slow) // 2 - 2 * len(stored)) <= 3200


def test_conversation_context(stack: Stack, client: OpenAI, engine: Any) -> None:
    cid = stack.conversation()
    first_text, second_text = "Where were you last night?", "Out, walking by the river."
    _, h1 = speak(client, first_text, voice="onyx", extra_headers={"X-Conversation-ID": cid})
    assert h1["x-conversation-id"] == cid
    # The second names the conversation in the body instead (the SDK's extra_body).
    _, h2 = speak(client, second_text, voice="shimmer", extra_body={"conversation_id": cid})
    assert h2["x-conversation-id"] == cid
    first, second = turn_of(stack, h1), turn_of(stack, h2)
    assert (first["index"], second["index"]) == (0, 1)
    assert (first["speaker"], second["speaker"]) == (6, 9)  # onyx, shimmer
    want = expected_codes(engine, stack, cid, [first], 9, second_text, **SHORT)
    assert np.array_equal(served_codes(stack, cid, second["id"]), want)
    alone = expected_codes(engine, stack, cid, [], 9, second_text, **SHORT)
    assert not np.array_equal(want, alone)  # the context made a difference


def test_models_and_voices(stack: Stack, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "csm-1b" and {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert stack.settings.model in ids
    model = client.models.list().data[0]
    assert (model.object, model.owned_by, model.created) == ("model", "sesame", 1741824000)
    voices = stack.client.get("/v1/audio/voices").json()["voices"]
    assert [v["name"] for v in voices][:3] == ["alloy", "ash", "ballad"]
    assert {v["name"]: v["speaker"] for v in voices}["verse"] == 10


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "named"),
    [
        ({"voice": "darth"}, 422, "unknown_voice", "darth"),
        ({"voice": "99"}, 422, "unknown_voice", "max_speaker"),
        ({"model": "tts-9"}, 422, "unknown_model", "tts-9"),
        ({"response_format": "ogg"}, 422, "invalid_input", "response_format"),
        ({"speed": 4.5}, 422, "invalid_input", "speed"),
        ({"stream_format": "websocket"}, 422, "invalid_input", "stream_format"),
        ({"input": "   "}, 422, "empty_text", "empty"),
        ({"extra_body": {"temperature": 9}}, 422, "invalid_input", "temperature"),
        ({"extra_body": {"max_audio_length_ms": 10**6}}, 422, "max_audio", "max_audio_length_ms"),
        ({"extra_body": {"bogus": 1}}, 422, "invalid_input", "bogus"),
        (
            {"extra_headers": {"X-Conversation-ID": str(uuid.uuid4())}},
            404,
            "not_found",
            "not found",
        ),
        (
            {"extra_headers": {"X-Conversation-ID": "new"}, "extra_body": {"conversation_id": "x"}},
            422,
            "conversation_mismatch",
            "differ",
        ),
    ],
)
def test_mistakes_are_4xx(
    stack: Stack, client: OpenAI, kwargs: dict[str, Any], status: int, code: str, named: str
) -> None:
    before = conversations(stack)
    kwargs = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.speech.create(**kwargs)
    error = info.value.response.json()["error"]
    assert info.value.status_code == status, error
    assert error["code"].startswith(code) and named in error["message"], error
    assert conversations(stack) == before  # nothing written


def test_postgresql_one_off_and_conversation(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("postgresql")
    with serve(stack) as url, OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c:
        data, headers = speak(c, "On PostgreSQL.", response_format="flac")
        assert "x-conversation-id" not in headers and decoded_length(data, "flac") > 0
        cid = stack.conversation()
        _, headers = speak(
            c, "Kept.", response_format="opus", extra_headers={"X-Conversation-ID": cid}
        )
        assert turn_of(stack, headers)["conversation_id"] == cid
        wait_for(lambda: conversations(stack) == 1, "the one-off removed")


def test_turn_audio_in_every_format(stack: Stack, client: OpenAI) -> None:
    _, headers = speak(
        client, "Downloaded in every format.", response_format="pcm", extra_headers=NEW
    )
    turn = turn_of(stack, headers)
    n, pcm = turn["frames"] * FRAME_SAMPLES, stored_pcm(stack, turn)
    for fmt in FORMATS:
        r = stack.client.get(
            f"/v1/conversations/{turn['conversation_id']}/turns/{turn['id']}/audio",
            params={"format": fmt},
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == MEDIA[fmt]
        assert_length(r.content, fmt, n, streamed=False)
        if fmt in ("wav", "flac"):
            samples, _ = sf.read(io.BytesIO(r.content), dtype="int16")
            assert np.asarray(samples, dtype="<i2").tobytes() == pcm
        if fmt == "pcm":
            assert r.content == pcm
    r = stack.client.get(
        f"/v1/conversations/{turn['conversation_id']}/turns/{turn['id']}/audio",
        params={"format": "ogg"},
    )
    assert r.status_code == 422


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_long_input_is_spoken_whole_and_streamed(stack: Stack, client: OpenAI) -> None:
    """4,096 characters (OpenAI's limit) are spoken segment by segment, back to back: the audio
    stream (and the SSE deltas) carry every segment's audio, exactly the stored turn; 4,097 is a
    422 naming the limit."""
    sentence = "Every sentence of this article is spoken in its turn. "
    text = (sentence * 80)[:4096].rsplit(" ", 1)[0] + "."
    text = text + " " + "x" * (4096 - len(text) - 1)
    assert len(text) == 4096
    body = {"temperature": 0, "max_audio_length_ms": 160}  # 2 frames a segment
    for stream_format in ("audio", "sse"):
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="alloy",
            input=text,
            response_format="pcm",
            stream_format=stream_format,  # type: ignore[arg-type]
            extra_headers=NEW,
            extra_body=body,
        ) as r:
            if stream_format == "sse":
                audio = b"".join(
                    base64.b64decode(e["audio"]) for e in sse_events(r.iter_lines())[:-1]
                )
            else:
                audio = b"".join(r.iter_bytes())
            headers = dict(r.headers)
        turn = turn_of(stack, headers)
        segments = turn["segments"]
        assert len(segments) > 70 and " ".join(s["text"] for s in segments) == text
        assert turn["frames"] == 2 * len(segments) == sum(s["frames"] for s in segments)
        assert audio == stored_pcm(stack, turn)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        speak(client, text + "y")
    error = refused.value.response.json()["error"]
    assert error["code"] == "text_too_long" and "the limit is 4096" in error["message"], error
