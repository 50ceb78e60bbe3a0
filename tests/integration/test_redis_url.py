"""``PARLEY_REDIS_URL`` malformed: ``parley`` stops at start with a clear error, touching
nothing. The parsing itself: tests/unit/test_redis_url.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_parley_stops_at_start_on_a_malformed_url(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PARLEY_REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26380",
        "PARLEY_DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}",
    }
    out = subprocess.run(
        [sys.executable, "-m", "parley", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "PARLEY_REDIS_URL" in out.stderr and "no service name" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and ":pw@" not in out.stderr
    assert not (tmp_path / "never.db").exists()  # it stopped before touching anything
