"""The CSM sidecar endpoint, ``POST /v1/csm/generate``, against a real worker on the tiny
checkpoint: its context segments are the prompt (the codes equal those of the same dialogue
built turn by turn through the conversation API, and the engine's own), both answer shapes
carry the stored turn exactly, nothing is left behind, and bad input is a 422 naming the
segment at fault with nothing written."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE
from tests.expected import expected_codes, served_codes
from tests.row_counts import counts
from tests.sounds import audio_file, chirp
from tests.stack import Stack

GREEDY = {"temperature": 0.0, "max_audio_length_ms": 800}
CLIPS = [audio_file(chirp(0.5, seed=1), 24_000), audio_file(chirp(0.4, 16_000, seed=2), 16_000)]
SEGMENTS = [
    {
        "text": "Hello there, how are you?",
        "speaker": 0,
        "audio": base64.b64encode(CLIPS[0]).decode(),
    },
    {"text": "Fine, thanks. And you?", "speaker": 1, "audio": base64.b64encode(CLIPS[1]).decode()},
]
TEXT, SPEAKER = "I am well, thank you for asking.", 0


def generate(stack: Stack, **body: Any) -> Any:
    body = {"text": TEXT, "speaker": SPEAKER, **GREEDY, **body}
    return stack.client.post("/v1/csm/generate", json=body)


@pytest.fixture(scope="module")
def reference(stack: Stack) -> dict[str, Any]:
    """The same dialogue through the conversation API: two provided turns, then the turn."""
    cid = stack.conversation(max_context_turns=3)
    provided = [
        stack.upload(cid, s["speaker"], s["text"], c) for s, c in zip(SEGMENTS, CLIPS, strict=True)
    ]
    spoken = stack.say(cid, SPEAKER, TEXT, **GREEDY)
    assert stack.wait_job(spoken["job_id"])["status"] == "succeeded"
    pcm = stack.client.get(f"/v1/conversations/{cid}/turns/{spoken['id']}/audio?format=pcm")
    assert pcm.status_code == 200
    return {"cid": cid, "provided": provided, "spoken": spoken, "pcm": pcm.content}


def test_context_is_the_prompt(stack: Stack, reference: dict[str, Any], engine: Any) -> None:
    before = counts(stack)
    r = generate(stack, context=SEGMENTS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "mimi_codes"
    assert (out["sample_rate"], out["frame_rate"]) == (24_000, 12.5)
    codes = np.asarray(out["codes"], dtype=np.int64)
    assert codes.shape[0] == out["n_q"] == engine.num_codebooks
    assert codes.shape[1] >= 1
    # The same codes as the turn spoken after the same two turns in a conversation, which are
    # the engine's own for exactly that context.
    cid = reference["cid"]
    served = served_codes(stack, cid, reference["spoken"]["id"])
    np.testing.assert_array_equal(codes.T, served)
    listed = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    np.testing.assert_array_equal(
        served, expected_codes(engine, stack, cid, listed[:2], SPEAKER, TEXT, **GREEDY)
    )
    # Without the context the turn is another: the segments were really in the prompt.
    bare = generate(stack)
    assert bare.status_code == 200, bare.text
    assert np.asarray(bare.json()["codes"]).T.tolist() != served.tolist()
    # The one-off conversations are gone: nothing is left behind.
    assert counts(stack) == before


def test_pcm_is_the_stored_audio(stack: Stack, reference: dict[str, Any]) -> None:
    # A data: URL prefix is accepted on a segment's audio, as browsers write it.
    segments = [{**SEGMENTS[0], "audio": "data:audio/wav;base64," + SEGMENTS[0]["audio"]}]
    segments.append(SEGMENTS[1])
    r = generate(stack, context=segments, output="pcm")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "audio_pcm" and out["sample_rate"] == SAMPLE_RATE
    samples = np.frombuffer(base64.b64decode(out["pcm"]), dtype="<f4")
    stored = np.frombuffer(reference["pcm"], dtype="<i2").astype(np.float32) / 32768.0
    assert samples.size == stored.size and samples.size % FRAME_SAMPLES == 0
    np.testing.assert_array_equal(samples, stored)


@pytest.mark.parametrize(
    ("change", "code", "names"),
    [
        (
            {"context": [SEGMENTS[0], {**SEGMENTS[1], "audio": "not base64!"}]},
            "invalid_audio",
            "context[1]",
        ),
        (
            {
                "context": [
                    {**SEGMENTS[0], "audio": base64.b64encode(b"RIFF" + b"\0" * 64).decode()}
                ]
            },
            "invalid_audio",
            "context[0]",
        ),
        ({"context": [{**SEGMENTS[0], "text": "  "}]}, "empty_text", "context[0]"),
        ({"context": [{**SEGMENTS[0], "speaker": 99}]}, "invalid_speaker", "context[0]"),
        ({"context": SEGMENTS * 33}, "context_too_long", "max_context_turns"),  # 66 > 64
        ({"context": SEGMENTS * 16}, "context_too_long", "max_queued_turns_per_key"),  # 33 > 32
        ({"max_audio_length_ms": 10**7}, "max_audio_length_ms_too_large", "limit"),
        ({"output": "mp3"}, "invalid_input", "output"),
        ({"temperature": "hot"}, "invalid_input", "temperature"),
        ({"voice": "alloy"}, "invalid_input", "voice"),
    ],
)
def test_bad_input_is_422_naming_it_and_writes_nothing(
    stack: Stack, change: dict[str, Any], code: str, names: str
) -> None:
    before = counts(stack)
    r = generate(stack, **change)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and names in error["message"], error
    assert counts(stack) == before
