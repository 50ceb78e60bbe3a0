"""The Alembic migration builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import make_engine
from shared.migrate import alembic_config
from shared.models import Base
from shared.settings import Settings
from tests.stack import database


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_matches_models_and_downgrades(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        settings = Settings(database_url=url)
        engine = make_engine(settings)
        try:
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
            command.downgrade(alembic_config(settings), "base")
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            command.upgrade(alembic_config(settings), "head")
            assert {"conversations", "turns", "turn_media", "jobs"} <= set(
                inspect(engine).get_table_names()
            )
        finally:
            engine.dispose()
