"""The load test's driver at a tiny size, against a real ``parley api`` and ``parley worker``
over HTTP (the bench stack), with a bearer key: nothing lost, nothing failed, and a report
whose figures agree with each other. Then its read-back must catch a lost and a duplicated
turn."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import load_report, service_bench
from bench.load_client import LoadClient, Recorder
from bench.load_driver import (
    GET_AUDIO,
    GET_JOB,
    POST_TURN,
    LoadConfig,
    LoadRun,
    drive,
    read_back,
)

pytestmark = pytest.mark.slow

CONFIG = LoadConfig(conversations=2, turns=2, pollers=1, frames=6, stream=1, poll_interval_s=0.05)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    key = secrets.token_urlsafe(16)
    env = {"PARLEY_API_KEYS": key, "PARLEY_WORKER_TORCH_THREADS": "1"}
    logs = tmp_path_factory.mktemp("load-logs")
    with service_bench.stack(str(tiny_model_dir), env, log_dir=logs) as (client, _ready):
        base_url = str(client.base_url)
        run = asyncio.run(drive(base_url, CONFIG, key=key))
        yield base_url, key, run


def test_tiny_load_loses_nothing_and_reports_consistently(served: Any) -> None:
    _, _, run = served
    result = load_report.report(run)
    expected = CONFIG.conversations * CONFIG.turns
    turns = result["turns"]
    assert result["errors"] == {}, result["errors"]
    assert result["error_count"] == 0
    assert turns == {
        "posted": expected,
        "accepted": expected,
        "rejected": 0,
        "succeeded": expected,
        "lost": 0,
        "duplicates": 0,
        "job_status": {"succeeded": expected},
    }
    assert result["streams"] == {"listened": 1, "mismatched": 0}
    lat = result["latency_ms"]
    assert lat["post_turn"]["n"] == expected
    assert lat["post_to_succeeded"]["n"] == expected
    assert lat["first_stream_byte"]["n"] == 1
    assert lat["get_job"]["n"] >= expected  # each job polled to its end
    for spread in lat.values():
        assert 0 < spread["p50"] <= spread["p99"]
    # The first audio comes before the turn's end, and both within the run.
    assert lat["first_stream_byte"]["p50"] < 1000 * result["wall_s"]
    assert lat["post_to_succeeded"]["p99"] < 1000 * result["wall_s"]
    tp = result["throughput"]
    assert math.isclose(tp["turns_per_s"], expected / result["wall_s"])
    assert 0 < tp["audio_frames_per_s"] <= expected * CONFIG.frames / result["wall_s"]
    assert math.isclose(tp["requests_per_s"], result["requests"] / result["wall_s"])
    # The load phase's requests; the read-back then lists each conversation and downloads
    # each turn's audio.
    read_back_requests = CONFIG.conversations + expected
    assert result["requests"] == sum(run.recorder.statuses.values()) - read_back_requests
    assert run.recorder.statuses[(GET_AUDIO, "200")] == expected
    # CPU: the machine, this client, and the stack's API and one worker, found by their pids.
    cores = result["cpu_cores"]
    assert {"machine", "client", "api"} <= set(cores)
    assert sum(k.startswith("worker-") for k in cores) == 1
    assert result["cpu_ms"]["workers_per_turn"] > 0
    assert result["cpu_ms"]["api_per_request"] > 0
    assert run.recorder.statuses[(POST_TURN, "202")] == expected
    assert run.recorder.statuses[(GET_JOB, "200")] >= expected


def test_read_back_catches_lost_and_duplicated_turns(served: Any) -> None:
    base_url, key, run = served
    gone, doubled = run.conversations

    async def tamper_and_read_back() -> LoadRun:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
            # A turn the driver never posted, in the second conversation: a duplicate.
            extra = await http.post(
                f"/v1/conversations/{doubled}/turns",
                json={
                    "speaker": 0,
                    "text": "Not posted by the driver.",
                    "params": {"max_audio_length_ms": 80},
                },
            )
            assert extra.status_code == 202, extra.text
            # The first conversation gone: its turns are lost.
            assert (await http.delete(f"/v1/conversations/{gone}")).status_code == 204
            checked = LoadRun(config=run.config, posted=run.posted, conversations=run.conversations)
            await read_back(LoadClient(http, Recorder(), max_retries=0), checked)
            return checked

    checked = asyncio.run(tamper_and_read_back())
    assert checked.lost == CONFIG.turns
    assert checked.duplicates == 1
    assert checked.verified == CONFIG.turns * (CONFIG.conversations - 1)
