"""API keys: the real `parley keys` CLI stores them hashed in SQL (create, list, revoke,
refusals), and `parley api` / `parley up` serve open (without keys) only on a loopback
address. Keys checked on requests: tests/api/test_api_keys.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.parley_cli import bearer, cli_db, create_key, parley, rows  # noqa: F401 (cli_db: fixture)
from tests.servers import free_port
from tests.stack import REDIS_URL, database


def test_keys_cli_creates_lists_and_revokes(db: str) -> None:
    out = parley(db, "keys", "create", "ci-bot")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("pk_") and len(key) >= 40 and "\n" not in key
    assert "cannot be shown again" in out.stderr
    (row,) = rows(db)
    assert row.name == "ci-bot" and row.revoked_at is None
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()  # the key itself is not kept
    assert row.prefix == key[:8]

    dup = parley(db, "keys", "create", "ci-bot")
    assert dup.returncode == 1 and dup.stdout == ""
    assert dup.stderr.strip() == "parley keys: an API key named 'ci-bot' already exists"
    other = create_key(db, "ops")
    assert other != key

    listed = parley(db, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PREFIX", "CREATED", "REVOKED"]
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(by_name) == {"ci-bot", "ops"}
    assert by_name["ci-bot"][1] == key[:8] and by_name["ci-bot"][-1] == "-"
    assert key not in listed.stdout and other not in listed.stdout

    out = parley(db, "keys", "revoke", "ci-bot")
    assert out.returncode == 0 and "revoked API key 'ci-bot'" in out.stdout, out.stderr
    again = parley(db, "keys", "revoke", "ci-bot")
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = parley(db, "keys", "revoke", "nobody")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "parley keys: no API key named 'nobody'"
    revoked = {r.name: r.revoked_at for r in rows(db)}
    assert revoked["ci-bot"] is not None and revoked["ops"] is None
    line = next(x for x in parley(db, "keys", "list").stdout.splitlines() if "ci-bot" in x)
    assert line.split()[-1].endswith("Z")  # the revocation time, not "-"


def test_keys_cli_rejects_a_bad_name_and_an_unmigrated_database(tmp_path: Path) -> None:
    with database("sqlite", tmp_path) as url:
        out = parley(url, "keys", "create", "two words")
        assert out.returncode == 1 and "invalid key name 'two words'" in out.stderr
        assert rows(url) == []
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    out = parley(bare, "keys", "list")
    assert out.returncode == 1 and "`parley migrate`" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def serve_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATABASE_URL=db_url,
        PARLEY_REDIS_URL=REDIS_URL,
        PARLEY_REDIS_PREFIX=f"parley-test-{uuid.uuid4().hex[:10]}",
    )
    return env


def wait_healthy(proc: subprocess.Popen[bytes], client: httpx.Client, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the API did not come up (exit {proc.poll()}):\n{log.read_text()}")


def test_api_and_up_refuse_to_serve_open_off_loopback(tmp_path: Path) -> None:
    with database("sqlite", tmp_path) as url:
        env = serve_env(url)
        # `up` would start its own Redis where none answers: it must refuse before that.
        env["PARLEY_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
        for command in ("api", "up"):
            port = free_port()
            out = subprocess.run(
                [sys.executable, "-m", "parley", command, "--host", "0.0.0.0", "--port", str(port)],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 2, (command, out.stdout, out.stderr)
            reason = out.stderr.strip().splitlines()[-1]
            assert reason.startswith("parley: refusing to serve without API keys on 0.0.0.0")
            assert "`parley keys create NAME`" in reason and "PARLEY_API_KEYS" in reason
            assert "redis" not in out.stderr.lower()  # nothing was started


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_api_serves_off_loopback_with_a_key_and_open_on_loopback(host: str, tmp_path: Path) -> None:
    with database("sqlite", tmp_path) as url:
        key = create_key(url, "ops") if host == "0.0.0.0" else None
        port = free_port()
        log = tmp_path / "api.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "parley", "api", "--host", host, "--port", str(port)],
                env=serve_env(url),
                cwd=tmp_path,
                stdout=out,
                stderr=out,
            )
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                    wait_healthy(proc, client, log)
                    r = client.post("/v1/conversations", json={})
                    if key is None:
                        assert r.status_code == 201, r.text  # open, on this machine only
                    else:
                        assert r.status_code == 401
                        ok = client.post("/v1/conversations", json={}, headers=bearer(key))
                        assert ok.status_code == 201, ok.text
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        text = log.read_text()
        assert ("the API runs open" in text) is (key is None), text
