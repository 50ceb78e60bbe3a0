"""``PARLEY_REDIS_URL`` parsing: plain URLs as redis-py reads them, Sentinel URLs into sentinels,
service and database, the broker's kombu form, and clear errors for a malformed URL. No server:
what connects to a real Sentinel set-up is ``tests/test_redis_sentinel.py``."""

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
