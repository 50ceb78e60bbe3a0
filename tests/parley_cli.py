"""The real `parley` CLI, run as an operator runs it, and the API keys it stores; the ``db``
fixture is a fresh SQL database of each kind (a test module imports ``cli_db`` to have it).
Used by tests/api/test_api_keys.py and tests/integration/test_keys_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db.engine import make_engine, make_session_factory
from shared.db.models import ApiKey
from shared.settings import Settings
from tests.stack import database

DB_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(params=DB_KINDS, name="db")
def cli_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


def parley(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "parley", *args], env=env, capture_output=True, text=True, timeout=60
    )


def create_key(db_url: str, name: str) -> str:
    out = parley(db_url, "keys", "create", name)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def rows(db_url: str) -> list[ApiKey]:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
