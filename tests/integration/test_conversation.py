"""A whole conversation through the REST API, real workers and the tiny CSM, on SQLite and
PostgreSQL: provided and generated turns from two speakers, each spoken with all earlier
turns as context."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.audio.containers import FRAME_SAMPLES, SAMPLE_RATE
from tests.expected import expected_codes, served_codes
from tests.sounds import audio_file, chirp, read
from tests.stack import RUNNING_MS, TOO_LONG_TEXT, Stack


def _audio(stack: Stack, cid: str, tid: str, fmt: str) -> tuple[np.ndarray, int, int]:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio", params={"format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"audio/{fmt}"
    return read(r.content)


def test_conversation_end_to_end(stack: Stack, engine: Any) -> None:
    cid = stack.conversation(metadata={"title": "e2e"})
    # The user's own speech: stereo, 44.1 kHz, WAV; Parley keeps it as 24 kHz mono.
    provided = stack.upload(
        cid, 0, "Hello there, how was your day?", audio_file(chirp(1.2, 44_100, channels=2), 44_100)
    )
    assert provided["source"] == "provided" and provided["audio_url"]
    turns = [
        stack.say(cid, 1, "Pretty good, thanks for asking."),
        stack.say(cid, 0, "Glad to hear it.", temperature=0.9, top_k=20, seed=7),
        stack.say(cid, 1, "What about you?"),
    ]
    jobs = [stack.wait_job(t["job_id"]) for t in [provided, *turns]]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4, jobs
    assert all(j["test_model"] and "test model" in j["model"] for j in jobs)
    assert [j["kind"] for j in jobs] == ["encode", "generate", "generate", "generate"]

    listed = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [t["index"] for t in listed] == [0, 1, 2, 3]
    assert [t["speaker"] for t in listed] == [0, 1, 0, 1]
    assert [t["source"] for t in listed] == ["provided"] + ["generated"] * 3
    assert stack.client.get(f"/v1/conversations/{cid}").json()["turn_count"] == 4

    # Provided audio: normalised to 24 kHz mono, encoded to codes once, from the stored audio.
    samples, rate, channels = _audio(stack, cid, provided["id"], "wav")
    assert (rate, channels) == (SAMPLE_RATE, 1) and abs(len(samples) - 1.2 * SAMPLE_RATE) < 10
    assert np.array_equal(served_codes(stack, cid, provided["id"]), engine.encode(samples))

    for turn in turns:
        got = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}").json()
        wav, rate, channels = _audio(stack, cid, turn["id"], "wav")
        flac, flac_rate, _ = _audio(stack, cid, turn["id"], "flac")
        assert (rate, flac_rate, channels) == (SAMPLE_RATE, SAMPLE_RATE, 1)
        assert len(wav) == got["frames"] * FRAME_SAMPLES and len(wav) % FRAME_SAMPLES == 0
        assert got["frames"] > 0 and got["duration_ms"] == got["frames"] * 80
        assert np.array_equal(wav, flac)
        assert float(np.abs(wav).max()) > 0  # real decoded audio, not silence
        codes = stack.client.get(f"/v1/conversations/{cid}/turns/{turn['id']}/codes").json()
        assert codes["frames"] == got["frames"] and codes["frame_rate"] == 12.5
        assert len(codes["codes"]) == codes["n_q"] == engine.num_codebooks

    # Each generated turn is exactly what CSM says with every earlier turn as its context.
    history = [provided]
    for turn, params in zip(
        turns, [{}, {"temperature": 0.9, "top_k": 20, "seed": 7}, {}], strict=True
    ):
        expected = expected_codes(
            engine, stack, cid, history, turn["speaker"], turn["text"], **params
        )
        assert np.array_equal(served_codes(stack, cid, turn["id"]), expected)
        history.append(turn)

    # Redis holds the hot window; deleting the conversation removes rows and keys.
    assert stack.redis.exists(stack.app.state.parley.context.key(cid))
    assert stack.client.delete(f"/v1/conversations/{cid}").status_code == 204
    assert stack.client.get(f"/v1/conversations/{cid}").status_code == 404
    assert stack.client.get(f"/v1/jobs/{turns[0]['job_id']}").status_code == 404
    assert not stack.redis.exists(stack.app.state.parley.context.key(cid))


def test_failed_job_has_a_reason_and_the_conversation_goes_on(stack: Stack, engine: Any) -> None:
    cid = stack.conversation()
    first = stack.say(cid, 0, "A normal first turn.")
    # The text passes the API's character limit but not the model's 2048-position budget (a
    # segment with its audio budget): the engine refuses it, the job fails with its reason.
    too_long = stack.say(cid, 1, TOO_LONG_TEXT, max_audio_length_ms=RUNNING_MS)
    after = stack.say(cid, 0, "And the conversation goes on.")
    assert stack.wait_job(first["job_id"])["status"] == "succeeded"
    failed = stack.wait_job(too_long["job_id"])
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "prompt_too_long" and "2048" in failed["error"]["message"]
    assert failed["audio_url"] is None
    assert stack.wait_job(after["job_id"])["status"] == "succeeded"
    # The failed turn is not context: the last turn saw only the first.
    expected = expected_codes(engine, stack, cid, [first], 0, after["text"])
    assert np.array_equal(served_codes(stack, cid, after["id"]), expected)


def test_readyz_names_the_test_model(stack: Stack) -> None:
    r = stack.client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] and body["test_model"] is True and "test model" in body["model"]
    assert body["checks"] == {"database": "ok", "redis": "ok", "workers": "1 live"}
    assert stack.client.get("/healthz").json() == {"status": "ok"}
