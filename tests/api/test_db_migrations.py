"""The Alembic migration builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db.engine import make_engine
from shared.db.migrate import alembic_config
from shared.db.models import Base
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
            command.downgrade(alembic_config(settings), "0003")  # 0004 adds the voice tables
            assert not {"voices", "speaker_voices", "turn_voices"} & set(
                inspect(engine).get_table_names()
            )
            assert "ix_jobs_status" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
            command.downgrade(alembic_config(settings), "0002")  # 0003 adds only an index
            assert "ix_jobs_status" not in {i["name"] for i in inspect(engine).get_indexes("jobs")}
            assert "api_keys" in inspect(engine).get_table_names()
            command.downgrade(alembic_config(settings), "0001")  # 0002 adds only api_keys
            assert "api_keys" not in inspect(engine).get_table_names()
            assert "conversations" in inspect(engine).get_table_names()
            command.downgrade(alembic_config(settings), "base")
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            command.upgrade(alembic_config(settings), "head")
            assert {
                "conversations",
                "turns",
                "turn_media",
                "jobs",
                "api_keys",
                "voices",
                "speaker_voices",
                "turn_voices",
            } <= set(inspect(engine).get_table_names())
            assert "ix_jobs_status" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
        finally:
            engine.dispose()
