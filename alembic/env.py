"""Alembic environment: the database URL comes from Parley's settings."""

from __future__ import annotations

from alembic import context

from shared.db.engine import make_engine
from shared.db.models import Base
from shared.settings import Settings

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.attributes.get("database_url") or Settings().database_url
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `parley migrate`")
run_migrations()
