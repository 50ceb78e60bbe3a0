"""Model loading: the tiny checkpoint through from_pretrained; a named model that cannot load
is an error at worker start; only the default falls back, and then says so everywhere."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.stack import Stack


def test_tiny_model_cli_is_reproducible(tmp_path: Path) -> None:
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "parley", "tiny-model", str(tmp_path / name)],
            check=True,
            capture_output=True,
        )
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "config.json" in files and "tokenizer.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_named_model_that_cannot_load_stops_the_worker(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("sqlite", workers=0)
    proc = stack.start_worker(wait=False, PARLEY_MODEL=str(tmp_path / "no-such-model"))
    assert proc.wait(timeout=120) == 2
    log = stack.worker_logs()
    assert "worker cannot start" in log and "no-such-model" in log
    assert "tiny" not in log.lower()  # no silent fallback
    r = stack.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["workers"] == "none live"


def test_default_model_falls_back_to_the_test_model_and_says_so(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack("sqlite", workers=0)
    stack.start_worker(
        PARLEY_MODEL="sesame/csm-1b",
        PARLEY_TINY_MODEL_DIR=str(tmp_path / "fallback-tiny"),
    )
    assert "cannot be had" in stack.worker_logs(tail=None)
    ready = stack.client.get("/readyz").json()
    assert ready["ready"] and ready["test_model"] is True and "test model" in ready["model"]
    cid = stack.conversation()
    job = stack.wait_job(stack.say(cid, 0, "Hello.")["job_id"])
    assert job["status"] == "succeeded" and job["test_model"] and "test model" in job["model"]
