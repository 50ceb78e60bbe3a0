"""SQL engine and session factory, made from settings (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
import stat
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(settings: Settings) -> Engine:
    """An engine for ``settings.database_url``.

    SQLite runs in WAL mode with foreign keys on, and every writing transaction begins
    IMMEDIATE: it takes the write lock up front, so a read-then-write section can never fail half
    way on a stale snapshot. Writers queue (busy timeout); that is SQLite's lot on one machine.
    Sessions from ``make_session_factory(engine, read_only=True)`` begin DEFERRED instead: reads
    (polling, downloads) never wait for the write lock nor hold it.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine, engine.url.database)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _file_identity(path: str | None) -> tuple[int, int] | None:
    """The database file's (device, inode), or None when it is missing or not a file."""
    if not path or path == ":memory:":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _configure_sqlite(engine: Engine, path: str | None) -> None:
    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # A pooled connection holds the file it opened. If the path now names another file
        # or none (removed, replaced, made unreadable), writing on would write into a file
        # nobody reads: drop the connection, so the next one fails loudly (503) or finds the
        # file back.
        if record.info.get("file") != _file_identity(path):
            raise DisconnectionError(f"the SQLite file {path} was removed or replaced")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        record.info["file"] = _file_identity(path)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_READ_ONLY = "parley_read_only"


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for writing (the default), or for reading only (never take SQLite's write
    lock up front; use them where nothing is written)."""
    bind = engine.execution_options(**{_READ_ONLY: True}) if read_only else engine
    return sessionmaker(bind=bind, expire_on_commit=False)
