"""Server voices and OpenAI's voice names: ``parley voices create`` (a real CLI process) makes a
voice every key may use; ``/v1/audio/speech`` with ``voice`` naming it pins its reference at the
head of the prompt, a key's own voice of the same name comes first, and OpenAI's other names
stay bare speaker ids. Keys cannot delete the server's voices; the operator can."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.expected import expected_codes, served_codes
from tests.integration.test_voices import make_voice, reference, wait_voice
from tests.sounds import audio_file, chirp
from tests.stack import Stack

KEYS = "key-a,key-b"
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
GREEDY = {"temperature": 0, "max_audio_length_ms": 800}


def parley(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def speak(stack: Stack, headers: dict[str, str], voice: str, text: str) -> dict[str, Any]:
    """One kept speech turn (X-Conversation-ID: new) in wav; the turn as the API lists it."""
    r = stack.client.post(
        "/v1/audio/speech",
        json={"model": "csm-1b", "input": text, "voice": voice, "response_format": "wav", **GREEDY},
        headers={**headers, "X-Conversation-ID": "new"},
    )
    assert r.status_code == 200, r.text
    cid, tid = r.headers["x-conversation-id"], r.headers["x-conversation-turn"]
    turn = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}", headers=headers).json()
    return {**turn, "cid": cid}


@pytest.fixture
def stack(make_stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    return make_stack("postgresql", api_keys=KEYS)


def test_a_server_voice_is_every_key_s_and_openai_names_map_to_it(
    stack: Stack, tmp_path: Path, engine: Any
) -> None:
    clip = tmp_path / "alloy.wav"
    clip.write_bytes(audio_file(chirp(1.2, 24_000, seed=4), 24_000))
    made = parley(stack, "voices", "create", "alloy", str(clip), "--text", "I am the alloy voice.")
    assert made.returncode == 0, made.stderr
    assert "server voice 'alloy' stored" in made.stdout
    listed = parley(stack, "voices", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alloy\t"), listed

    # Both keys see it, marked as the server's, and may use it.
    for headers in (A, B):
        stack.client.headers.update(headers)
        voice = wait_voice(stack, "alloy")
        assert voice["status"] == "ready" and voice["server"] is True
        names = {v["name"]: v for v in stack.client.get("/v1/audio/voices").json()["voices"]}
        assert names["alloy"]["named"] is True and names["ash"]["named"] is False

    # voice="alloy" from key B: the server voice's reference heads the prompt.
    stack.client.headers.update(B)
    alloy = reference(stack, "alloy", 0)
    turn = speak(stack, B, "alloy", "Hello from the alloy voice.")
    assert turn["speaker"] == 0
    args = (engine, stack, turn["cid"], [], 0, turn["text"])
    want = expected_codes(*args, head=[alloy], **GREEDY)
    assert np.array_equal(served_codes(stack, turn["cid"], turn["id"]), want)
    assert not np.array_equal(want, expected_codes(*args, **GREEDY))  # the head mattered
    # An OpenAI name with no voice behind it is a bare speaker id: no head.
    ash = speak(stack, B, "ash", "Hello from speaker one.")
    assert ash["speaker"] == 1
    np.testing.assert_array_equal(
        served_codes(stack, ash["cid"], ash["id"]),
        expected_codes(engine, stack, ash["cid"], [], 1, ash["text"], **GREEDY),
    )

    # Key A's own "alloy" comes before the server's, for A only.
    stack.client.headers.update(A)
    make_voice(stack, "alloy", speaker=2, headers=A)
    own = wait_voice(stack, "alloy")
    assert own["server"] is False and own["speaker"] == 2
    mine = speak(stack, A, "alloy", "Hello from my own alloy.")
    assert mine["speaker"] == 2
    want = expected_codes(
        engine,
        stack,
        mine["cid"],
        [],
        2,
        mine["text"],
        head=[reference(stack, "alloy", 2)],
        **GREEDY,
    )
    assert np.array_equal(served_codes(stack, mine["cid"], mine["id"]), want)
    # A conversation of key B binds the server voice by name.
    stack.client.headers.update(B)
    r = stack.client.post("/v1/conversations", json={"speakers": {"1": "alloy"}})
    assert r.status_code == 201 and r.json()["speakers"] == {"1": "alloy"}, r.text
    bound = r.json()["id"]

    # A key cannot delete the server's voice; the operator can, once nothing binds it.
    r = stack.client.delete("/v1/voices/alloy")
    assert r.status_code == 409 and r.json()["error"]["code"] == "server_voice", r.text
    refused = parley(stack, "voices", "delete", "alloy")
    assert refused.returncode == 1 and "bound to speaker 1" in refused.stderr, refused
    assert stack.client.delete(f"/v1/conversations/{bound}").status_code == 204
    deleted = parley(stack, "voices", "delete", "alloy")
    assert deleted.returncode == 0, deleted.stderr
    assert stack.client.get("/v1/voices/alloy").status_code == 404  # B: gone
    assert stack.client.get("/v1/voices/alloy", headers=A).json()["server"] is False  # A's own


def test_the_cli_refuses_bad_voices_clearly(stack: Stack, tmp_path: Path) -> None:
    missing = parley(stack, "voices", "create", "v", str(tmp_path / "nope.wav"), "--text", "Hi.")
    assert missing.returncode == 1 and "cannot read" in missing.stderr, missing
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really")
    bad = parley(stack, "voices", "create", "v", str(junk), "--text", "Hi.")
    assert bad.returncode == 1 and "not audio" in bad.stderr, bad
    name = parley(stack, "voices", "create", "bad name", str(junk), "--text", "Hi.")
    assert name.returncode == 1 and "not valid" in name.stderr, name
    gone = parley(stack, "voices", "delete", "nobody")
    assert gone.returncode == 1 and "no server voice 'nobody'" in gone.stderr, gone
    assert parley(stack, "voices", "list").stdout.startswith("no server voices")
