"""SQL engine and session factory, made from settings (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# How long a writing transaction waits for the process's writer lock (below) before it goes on
# to SQLite's own busy wait.
WRITER_WAIT_S = 30.0
# While another process writes, BEGIN IMMEDIATE is tried again this often (SQLite's busy handler
# waits up to 100 ms between its tries, so a burst of writes in one process starved the others).
BEGIN_POLL_MS = 2


def make_engine(settings: Settings) -> Engine:
    """An engine for ``settings.database_url``.

    SQLite runs in WAL mode with foreign keys on, and every writing transaction begins
    IMMEDIATE: it takes the write lock up front, so a read-then-write section can never fail half
    way on a stale snapshot. Writers queue; that is SQLite's lot on one machine. Within a process
    they queue on a lock of the process (one per database file, ``_writer_lock``), taken
    before BEGIN IMMEDIATE and given back when the transaction ends, so the next writer starts
    the moment the last one commits. A writer of another process is waited out by trying BEGIN
    IMMEDIATE every 2 ms (``BEGIN_POLL_MS``), up to the busy timeout. SQLite's own busy handler
    waits up to 100 ms between tries: with it, a burst of new turns took whole 100 ms steps, and
    one process's burst of writes starved the other processes.
    Sessions from ``make_session_factory(engine, read_only=True)`` begin DEFERRED instead: reads
    (polling, downloads) never wait for the write lock nor hold it.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "factory": _Connection,
            },
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


_WRITER_LOCKS: dict[str, threading.Lock] = {}  # per database file (its real path)
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: str | None) -> threading.Lock | None:
    """This process's lock for writing transactions on the file at ``path`` (None for an
    in-memory database: nothing shares it)."""
    if not path or path == ":memory:":
        return None
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(os.path.realpath(path), threading.Lock())


class _Connection(sqlite3.Connection):
    """A SQLite connection that gives back the writer lock its transaction holds when the
    transaction ends, however it ends: commit, rollback (also the pool's reset on return) or
    close. A plain lock, not a thread's: a session may end in another thread than it began."""

    writer: threading.Lock | None = None  # held by this connection's open transaction

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer()

    def release_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.release()


def _begin_writing(connection: Any, writer: threading.Lock | None) -> None:
    """BEGIN IMMEDIATE, first taking ``writer`` (kept by the DBAPI connection, a
    :class:`_Connection`, until the transaction ends)."""
    if writer is not None and not writer.acquire(timeout=WRITER_WAIT_S):
        log.warning(
            "a writing transaction waited %.0f s for this process's other writers; "
            "going on to SQLite's busy wait",
            WRITER_WAIT_S,
        )
        writer = None  # not held: SQLite alone decides
    dbapi_connection = connection.connection.dbapi_connection
    try:
        _begin_immediate(connection, dbapi_connection)
    except BaseException:
        if writer is not None:
            writer.release()
        raise
    dbapi_connection.writer = writer


def _begin_immediate(connection: Any, dbapi_connection: Any) -> None:
    """BEGIN IMMEDIATE, tried every ``BEGIN_POLL_MS`` or so while another process holds the
    write lock, for up to ``SQLITE_BUSY_TIMEOUT_MS``; the last try goes through SQLAlchemy, so
    a failure is its ``OperationalError`` as before."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    dbapi_connection.execute(f"PRAGMA busy_timeout={BEGIN_POLL_MS}")
    try:
        while time.monotonic() < deadline:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    break  # not a wait: the last try below raises it
            time.sleep(BEGIN_POLL_MS / 1000)
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        with contextlib.suppress(sqlite3.Error):  # a broken connection's own error goes up
            dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _configure_sqlite(engine: Engine, path: str | None) -> None:
    writer = _writer_lock(path)

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
        if connection.get_execution_options().get(_READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")
        else:
            _begin_writing(connection, writer)


_READ_ONLY = "parley_read_only"


def make_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for writing (the default), or for reading only (never take SQLite's write
    lock up front; use them where nothing is written)."""
    bind = engine.execution_options(**{_READ_ONLY: True}) if read_only else engine
    return sessionmaker(bind=bind, expire_on_commit=False)
