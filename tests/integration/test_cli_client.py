"""``parley say`` and ``parley render``, run as real CLI processes against a real HTTP server
(uvicorn) with a real worker on the tiny checkpoint: the files decode to exactly the turns'
stored audio (and the pauses), the conversation holds the turns in order, and every mistake is a
one-line message with a nonzero exit, nothing sent for a bad file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from parley.dialogue import parse_dialogue
from shared.audio.containers import FRAME_SAMPLES
from shared.db.engine import make_engine
from shared.db.models import Conversation
from tests.stack import Stack, running_stack

KEY = "key-cli"
GREEDY = ["--temperature", "0", "--max-audio-length-ms", "800"]
DIALOGUE = """# a short scene
A: Did you hear that?
B: Hear what? I was
   in the other room.

A: Never mind.
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    with running_stack("sqlite", tmp_path_factory.mktemp("cli"), tiny_model_dir, key=KEY) as s:
        yield s


def parley(server: str, *args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARLEY_URL": server, "PARLEY_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def conversations(stack: Stack) -> int:
    engine = make_engine(stack.settings)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Conversation)) or 0)
    finally:
        engine.dispose()


def stored_pcm(stack: Stack, cid: str, tid: str) -> np.ndarray:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=pcm")
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, dtype="<i2")


def conversation_of(stderr: str) -> str:
    return stderr.split("conversation ", 1)[1].split()[0].rstrip(":;")


def decode(path: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(path.read_bytes()), dtype="int16")
    return np.asarray(samples), int(rate)


def test_say_writes_the_turn_and_continues_a_conversation(
    stack: Stack, server: str, tmp_path: Path
) -> None:
    out = tmp_path / "hello.wav"
    done = parley(server, "say", "Hello there.", "-o", str(out), *GREEDY)
    assert done.returncode == 0, done.stderr
    assert "TEST model" in done.stderr  # the tiny random checkpoint is named as such
    cid = conversation_of(done.stderr)
    samples, rate = decode(out)
    [turn] = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert rate == 24_000 and samples.ndim == 1
    assert np.array_equal(samples, stored_pcm(stack, cid, turn["id"]))
    assert len(samples) == turn["frames"] * FRAME_SAMPLES

    again = parley(
        server, "say", "And again.", "--speaker", "1", "--conversation", cid,
        "-o", str(tmp_path / "again.flac"), *GREEDY,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [(t["speaker"], t["text"]) for t in turns] == [(0, "Hello there."), (1, "And again.")]
    assert np.array_equal(
        decode(tmp_path / "again.flac")[0], stored_pcm(stack, cid, turns[1]["id"])
    )


@pytest.mark.parametrize("ext", ["flac", "opus"])
def test_render_joins_the_turns_of_one_conversation(
    stack: Stack, server: str, tmp_path: Path, ext: str
) -> None:
    script = tmp_path / "scene.txt"
    script.write_text(DIALOGUE)
    out = tmp_path / f"scene.{ext}"
    done = parley(server, "render", str(script), "-o", str(out), "--gap-ms", "200", *GREEDY)
    assert done.returncode == 0, done.stderr
    assert "rendering" in done.stderr and "3/3" in done.stderr  # the progress bar
    cid = conversation_of(done.stderr)
    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [(t["speaker"], t["text"], t["status"]) for t in turns] == [
        (line.speaker, line.text, "succeeded") for line in parse_dialogue(DIALOGUE)
    ]
    gap = np.zeros(200 * 24, dtype=np.int16)
    pieces = [stored_pcm(stack, cid, t["id"]) for t in turns]
    want = np.concatenate([pieces[0], gap, pieces[1], gap, pieces[2]])
    samples, rate = decode(out)
    assert rate == 24_000 and len(samples) == len(want)
    if ext == "flac":  # lossless: exactly the stored turns and the pauses
        assert np.array_equal(samples, want)


def test_mistakes_are_one_line_and_send_nothing(stack: Stack, server: str, tmp_path: Path) -> None:
    before = conversations(stack)
    script = tmp_path / "bad.txt"
    script.write_text("A: fine\nno speaker here? fine, a continuation\nB:\n")
    bad = parley(server, "render", str(script), "-o", str(tmp_path / "x.wav"))
    assert bad.returncode == 2 and "line 3: speaker B says nothing" in bad.stderr, bad.stderr
    ext = parley(server, "say", "Hi.", "-o", str(tmp_path / "x.xyz"))
    assert ext.returncode == 2 and "cannot tell the format" in ext.stderr, ext.stderr
    missing = parley(server, "render", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.wav"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr, missing.stderr
    script.write_text("A: hi\n")
    voice = parley(server, "render", str(script), "-o", str(tmp_path / "x.wav"),
                   "--voices", "A=nobody")  # fmt: skip
    assert voice.returncode == 1 and "422 unknown_voice" in voice.stderr, voice.stderr
    key = parley(server, "say", "Hi.", "-o", str(tmp_path / "x.wav"), key="wrong")
    assert key.returncode == 1 and "401 unauthorized: unknown API key" in key.stderr, key.stderr
    text = parley(server, "say", "   ", "-o", str(tmp_path / "x.wav"))
    assert text.returncode == 1 and "empty_text" in text.stderr, text.stderr
    gone = parley("http://127.0.0.1:1", "say", "Hi.", "-o", str(tmp_path / "x.wav"))
    assert gone.returncode == 1 and "cannot reach Parley at http://127.0.0.1:1" in gone.stderr
    for result in (bad, ext, missing, voice, key, gone):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".x.*"))  # no file at all
    assert conversations(stack) == before  # say removes the conversation it made for nothing
