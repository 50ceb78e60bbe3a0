"""Streaming a turn's audio while it is generated, over real HTTP (uvicorn), with real workers,
on SQLite and PostgreSQL: opened before the job starts, while it runs and after it ends, the
stream carries exactly the stored audio's samples in pcm, wav and flac, and their encoding at
its length in mp3, opus and aac; listeners that leave disturb nothing; turns that fail or are
cancelled end their streams promptly."""

from __future__ import annotations

import io
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE
from shared.audio.formats import AUDIO_FORMATS, MEDIA_TYPES
from tests.decoding import assert_length, decoded
from tests.expected import expected_codes, served_codes
from tests.http_server import serve
from tests.sounds import audio_file, chirp
from tests.stack import RUNNING_MS, TOO_LONG_TEXT, Stack

CHUNK_BYTES = 2 * FRAME_SAMPLES  # one frame of 16-bit PCM
LONG_MS = 30_000  # 375 frames: a turn that runs for about a second or more on the tiny model


@dataclass
class Listener:
    """A client streaming one turn in a thread of its own, keeping what it got and when."""

    url: str
    path: str
    fmt: str = "pcm"
    max_bytes: int | None = None  # leave (close the connection) after this much
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    first_byte_at: float | None = None
    ended_at: float | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Listener:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.url, timeout=60) as client,
                client.stream("GET", self.path, params={"format": self.fmt}) as r,
            ):
                self.status, self.headers = r.status_code, dict(r.headers)
                for chunk in r.iter_raw():
                    if self.first_byte_at is None:
                        self.first_byte_at = time.monotonic()
                    self.body += chunk
                    if self.max_bytes is not None and len(self.body) >= self.max_bytes:
                        break
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def join(self, timeout: float = 120) -> Listener:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"stream {self.path} did not end"
        if self.error is not None:
            raise self.error
        return self


def stream_path(cid: str, tid: str) -> str:
    return f"/v1/conversations/{cid}/turns/{tid}/stream"


def pcm_of(listener: Listener) -> np.ndarray:
    """The int16 samples of a finished 200 stream, its format's framing checked."""
    assert listener.status == 200, bytes(listener.body[:500])
    assert listener.headers["x-sample-rate"] == str(SAMPLE_RATE)
    body = bytes(listener.body)
    if listener.fmt == "wav":
        assert listener.headers["content-type"] == "audio/wav"
        body = strip_wav_header(body)
    else:
        assert listener.headers["content-type"] == "audio/pcm"
    assert len(body) % 2 == 0
    return np.frombuffer(body, dtype="<i2")


def assert_heard(listener: Listener, want: np.ndarray, *, streamed: bool = False) -> None:
    """A finished stream of any format: pcm, wav and flac carry exactly ``want``; mp3, opus
    and aac decode to its length (with their codec's padding)."""
    if listener.fmt in ("pcm", "wav"):
        assert np.array_equal(pcm_of(listener), want), listener.fmt
        return
    assert listener.status == 200, bytes(listener.body[:500])
    assert listener.headers["content-type"] == MEDIA_TYPES[listener.fmt]
    body = bytes(listener.body)
    assert_length(body, listener.fmt, len(want), streamed=streamed)
    if listener.fmt == "flac":  # lossless
        assert np.array_equal(decoded(body, "flac", streamed=streamed), want)


def strip_wav_header(data: bytes) -> bytes:
    """Check the 44-byte open-length WAV header (24 kHz, mono, 16-bit); return the PCM after it."""
    (riff, riff_size, wave, fmt_id, fmt_size, codec, channels, rate, byte_rate, align, bits) = (
        struct.unpack("<4sI4s4sIHHIIHH", data[:36])
    )
    data_id, data_size = struct.unpack("<4sI", data[36:44])
    assert (riff, wave, fmt_id, data_id) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert riff_size == data_size == 0xFFFFFFFF  # open length
    assert (fmt_size, codec, channels, rate, bits) == (16, 1, 1, SAMPLE_RATE, 16)
    assert (byte_rate, align) == (2 * SAMPLE_RATE, 2)
    return data[44:]


def stored(stack: Stack, cid: str, tid: str) -> np.ndarray:
    """The turn's stored audio as int16 samples, from both download formats (which agree)."""
    samples = []
    for fmt in ("flac", "wav"):
        r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio", params={"format": fmt})
        assert r.status_code == 200, r.text
        data, rate = sf.read(io.BytesIO(r.content), dtype="int16")
        assert rate == SAMPLE_RATE
        samples.append(data)
    assert np.array_equal(samples[0], samples[1])
    return np.asarray(samples[0])


def job(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(stack.client.get(f"/v1/jobs/{job_id}").json())


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def full_stream(url: str, cid: str, tid: str, fmt: str = "pcm") -> np.ndarray:
    return pcm_of(Listener(url, stream_path(cid, tid), fmt).start().join())


def test_stream_opened_before_the_job_starts(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    first = stack.say(
        cid, 0, "A long first turn that keeps the worker busy.", max_audio_length_ms=RUNNING_MS
    )
    second = stack.say(cid, 1, "The turn we listen to before it starts.", max_audio_length_ms=1600)
    wait_for(lambda: job(stack, first["job_id"])["status"] == "running", what="first running")
    listeners = [
        Listener(server, stream_path(cid, second["id"]), fmt).start() for fmt in AUDIO_FORMATS
    ]
    time.sleep(0.3)  # the requests are in and waiting...
    assert job(stack, second["job_id"])["status"] == "queued"  # ...on a job not yet started
    assert stack.client.delete(f"/v1/jobs/{first['job_id']}").status_code == 200  # its turn now
    for listener in listeners:
        listener.join()
    assert stack.wait_job(second["job_id"])["status"] == "succeeded"
    want = stored(stack, cid, second["id"])
    assert len(want) == stack.wait_job(second["job_id"])["progress"]["frames"] * FRAME_SAMPLES
    for listener in listeners:
        assert_heard(listener, want, streamed=True)


def test_stream_opened_while_it_runs(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    turn = stack.say(cid, 0, "A turn we join while it is spoken.", max_audio_length_ms=LONG_MS)
    wait_for(
        lambda: (
            (j := job(stack, turn["job_id"]))["status"] == "running" and j["progress"]["frames"] > 0
        ),
        what="the job running",
    )
    listener = Listener(server, stream_path(cid, turn["id"])).start()
    wait_for(lambda: listener.first_byte_at is not None or not listener.thread.is_alive())
    at_first_byte = job(stack, turn["job_id"])
    listener.join()
    done = stack.wait_job(turn["job_id"])
    assert done["status"] == "succeeded"
    # The listener joined mid-turn, yet got it all from the start.
    assert at_first_byte["status"] == "running", at_first_byte
    assert at_first_byte["progress"]["frames"] < done["progress"]["frames"]
    want = stored(stack, cid, turn["id"])
    assert len(want) == done["progress"]["frames"] * FRAME_SAMPLES
    assert np.array_equal(pcm_of(listener), want)


def test_stream_after_the_turn_finished(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    turn = stack.say(cid, 0, "A turn heard after it was spoken.", max_audio_length_ms=1600)
    assert stack.wait_job(turn["job_id"])["status"] == "succeeded"
    want = stored(stack, cid, turn["id"])
    for fmt in AUDIO_FORMATS:  # whole files now (mp3 with its gapless tag)
        assert_heard(Listener(server, stream_path(cid, turn["id"]), fmt).start().join(), want)
    # Once the Redis stream has expired, the stored audio is served the same.
    stack.redis.delete(stack.keys.job_audio(turn["job_id"]))
    assert np.array_equal(full_stream(server, cid, turn["id"], "wav"), want)


def test_provided_turn_streams_its_stored_audio(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    provided = stack.upload(cid, 0, "My own words.", audio_file(chirp(0.7, 16_000), 16_000))
    want = stored(stack, cid, provided["id"])
    assert len(want) == round(0.7 * SAMPLE_RATE)
    assert np.array_equal(full_stream(server, cid, provided["id"], "pcm"), want)
    assert np.array_equal(full_stream(server, cid, provided["id"], "wav"), want)


def test_a_listener_that_leaves_does_not_disturb_the_turn(
    stack: Stack, server: str, engine: Any
) -> None:
    cid = stack.conversation()
    text = "A turn one listener leaves early."
    turn = stack.say(cid, 0, text, max_audio_length_ms=LONG_MS)
    path = stream_path(cid, turn["id"])
    whole = Listener(server, path).start()
    leaver = Listener(server, path, max_bytes=3 * CHUNK_BYTES).start()
    leaver.join()
    assert leaver.status == 200 and len(leaver.body) >= 3 * CHUNK_BYTES
    assert job(stack, turn["job_id"])["status"] == "running"  # it left mid-turn
    done = stack.wait_job(turn["job_id"])
    assert done["status"] == "succeeded"
    # The turn is complete and exactly what the engine says for it.
    codes = served_codes(stack, cid, turn["id"])
    assert np.array_equal(
        codes, expected_codes(engine, stack, cid, [], 0, text, max_audio_length_ms=LONG_MS)
    )
    want = stored(stack, cid, turn["id"])
    assert len(want) == codes.shape[0] * FRAME_SAMPLES
    assert np.array_equal(pcm_of(whole.join()), want)
    body = bytes(leaver.body)  # where it stopped reading: not always on a sample boundary
    got = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
    assert np.array_equal(got, want[: len(got)])


def test_cancelled_turns_end_their_streams(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    running = stack.say(
        cid, 0, "A long turn cancelled while it runs.", max_audio_length_ms=RUNNING_MS
    )
    queued = stack.say(cid, 1, "A turn cancelled before it starts.", max_audio_length_ms=1600)
    wait_for(
        lambda: (
            (j := job(stack, running["job_id"]))["status"] == "running"
            and j["progress"]["frames"] > 0
        ),
        what="the job running",
    )
    on_running = Listener(server, stream_path(cid, running["id"])).start()
    on_queued = Listener(server, stream_path(cid, queued["id"])).start()
    wait_for(lambda: on_running.first_byte_at is not None, what="the first audio")
    time.sleep(0.2)  # the listener of the queued turn is waiting too

    assert stack.client.delete(f"/v1/jobs/{queued['job_id']}").status_code == 200
    cancelled_at = time.monotonic()
    on_queued.join()
    assert on_queued.status == 409
    assert b'"turn_cancelled"' in on_queued.body
    assert on_queued.ended_at is not None and on_queued.ended_at - cancelled_at < 3

    assert stack.client.delete(f"/v1/jobs/{running['job_id']}").status_code == 200
    cancelled_at = time.monotonic()
    on_running.join()
    assert on_running.ended_at is not None and on_running.ended_at - cancelled_at < 3
    partial = pcm_of(on_running)  # the audio so far, then the stream just ends
    assert 0 < len(partial) < RUNNING_MS // 80 * FRAME_SAMPLES
    assert len(partial) % FRAME_SAMPLES == 0

    # Opened once they are known to be cancelled: 409 at once.
    for turn in (queued, running):
        r = stack.client.get(stream_path(cid, turn["id"]))
        assert r.status_code == 409 and r.json()["error"]["code"] == "turn_cancelled", r.text


def test_failed_turn_is_409(stack: Stack, server: str) -> None:
    cid = stack.conversation()
    too_long = stack.say(cid, 0, TOO_LONG_TEXT, max_audio_length_ms=RUNNING_MS)
    # Opened at once (most likely before the job fails): 409 once the failure is known.
    listener = Listener(server, stream_path(cid, too_long["id"])).start().join()
    assert listener.status == 409 and b'"turn_failed"' in listener.body
    assert stack.wait_job(too_long["job_id"])["status"] == "failed"
    r = stack.client.get(stream_path(cid, too_long["id"]))
    assert r.status_code == 409 and r.json()["error"]["code"] == "turn_failed"
    assert "2048" in r.json()["error"]["message"]


def test_bad_format_and_unknown_turn(stack: Stack) -> None:
    cid = stack.conversation()
    provided = stack.upload(cid, 0, "Hi.", audio_file(chirp(0.2), SAMPLE_RATE))
    r = stack.client.get(stream_path(cid, provided["id"]), params={"format": "ogg"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert all(f"'{fmt}'" in error["message"] for fmt in AUDIO_FORMATS), error
    for path in (
        stream_path(cid, "00000000-0000-0000-0000-000000000000"),
        stream_path("00000000-0000-0000-0000-000000000000", provided["id"]),
    ):
        r = stack.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_stream_ends_when_the_worker_dies(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite")  # a stack of its own: its worker is killed
    cid = stack.conversation()
    turn = stack.say(cid, 0, "A turn whose worker dies.", max_audio_length_ms=RUNNING_MS)
    with serve(stack) as url:
        listener = Listener(url, stream_path(cid, turn["id"])).start()
        wait_for(lambda: listener.first_byte_at is not None, what="the first audio")
        stack.workers[0].kill()
        killed_at = time.monotonic()
        listener.join(timeout=30)
    assert job(stack, turn["job_id"])["status"] == "running"  # nobody told SQL
    # Its heartbeat (3 s in tests) runs out, and the listener's next check ends the stream.
    assert listener.ended_at is not None and listener.ended_at - killed_at < 3 * 1 + 3
    partial = pcm_of(listener)
    assert 0 < len(partial) < 375 * FRAME_SAMPLES and len(partial) % FRAME_SAMPLES == 0
