"""``make bench``'s voice-agent figures (``bench.voice_agent``) at a tiny size against a real
``parley api`` and ``parley worker``: a 4,096-character ``/v1/audio/speech`` input against a
one-sentence one, and the live socket's first frame against a REST turn's first audio. Only
their shape and sanity are checked here, never a timing target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import service_bench, voice_agent
from shared.sentences import split_segments


def test_the_long_text_is_exact_prose() -> None:
    text = voice_agent.long_text()
    assert len(text) == 4096 and text.endswith(".")
    segments = split_segments(text)
    assert len(segments) > 10 and segments[0] == voice_agent.STORY[0]
    assert len(set(segments)) == len(segments)  # sentences, not one repeated
    for chars in (500, 3001, 4095):
        assert len(voice_agent.long_text(chars)) == chars


def _sane(sample: dict[str, Any]) -> None:
    assert 0 < sample["first_audio_ms"] <= sample["total_ms"]
    assert sample["bytes"] > 0 and sample["bytes"] % 2 == 0  # s16le samples


@pytest.mark.slow
def test_voice_agent_figures_on_a_real_stack(tiny_model_dir: Path) -> None:
    with service_bench.stack(str(tiny_model_dir), {"PARLEY_WORKER_TORCH_THREADS": "1"}) as (
        client,
        _ready,
    ):
        result = voice_agent.measure(client, repeats=1)

    long = result["long_input"]
    assert long["long_chars"] == 4096 and long["long_segments"] > 10
    assert long["short_chars"] == len(voice_agent.STORY[0])
    assert [len(long["samples"][k]) for k in ("long", "short")] == [1, 1]
    for sample in long["samples"]["long"] + long["samples"]["short"]:
        _sane(sample)
        assert sample["status"] == "cancelled"  # stopped once its first audio was in
    assert long["samples"]["long"][0]["segments"] == long["long_segments"]
    assert long["samples"]["short"][0]["segments"] == 1
    assert long["long_over_short"] == pytest.approx(
        long["long_first_audio_ms_p50"] / long["short_first_audio_ms_p50"]
    )

    live = result["live_socket"]
    assert [len(live["samples"][k]) for k in ("live", "rest_turn")] == [1, 1]
    (socket,), (rest,) = live["samples"]["live"], live["samples"]["rest_turn"]
    _sane(socket)
    _sane(rest)
    assert rest["status"] == "cancelled"
    # The live turn was interrupted, keeping what it had spoken, and said so in order.
    assert socket["status"] == "succeeded" and socket["interrupted"] and socket["frames"] > 0
    events = socket["events"]
    assert events[0] == "turn.started" and events[-1] == "turn.done" and "audio" in events
    assert 0 < socket["started_ms"] <= socket["running_ms"]
    assert live["live_over_rest"] == pytest.approx(
        live["live_first_frame_ms_p50"] / live["rest_first_audio_ms_p50"]
    )
    assert voice_agent.rows(result)[0][1].endswith(f"(x{long['long_over_short']:.2f})")
