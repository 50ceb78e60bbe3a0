"""SQLite engines: writers of one process queue on a lock of the process, not in SQLite's busy
wait, and the lock is given back however a writing transaction ends."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from shared.db import engine as db_engine
from shared.db.engine import make_engine, make_session_factory
from shared.settings import Settings


@pytest.fixture
def no_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own busy wait off: a writer that meets another one's lock fails at once."""
    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 0)


def _engine(path: Path) -> Engine:
    engine = make_engine(Settings(database_url=f"sqlite:///{path}"))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    return engine


def _writer_held(path: Path) -> bool:
    lock = db_engine._writer_lock(str(path))
    assert lock is not None
    return lock.locked()


def test_writers_of_one_process_queue_on_its_lock(tmp_path: Path, no_busy_wait: None) -> None:
    engine = _engine(tmp_path / "db.sqlite")
    sessions = make_session_factory(engine)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        start.wait()
        try:
            with sessions() as session:
                session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
                threading.Event().wait(0.02)  # hold the write lock a while
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as connection:
        assert sorted(connection.scalars(text("SELECT n FROM t"))) == list(range(8))


def test_a_writer_of_another_process_still_meets_sqlites_lock(
    tmp_path: Path, no_busy_wait: None
) -> None:
    """The lock is the process's: a connection it does not know of (another process, here a
    plain one) is kept out by SQLite, as before."""
    path = tmp_path / "db.sqlite"
    engine = _engine(path)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert not _writer_held(path)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_writer_waits_out_another_processs_transaction(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE polls (a few ms a try) until the other writer commits, well past one
    poll, and then gets in."""
    path = tmp_path / "db.sqlite"
    engine = _engine(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    committer = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    committer.start()
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
            assert connection.scalar(text("SELECT count(*) FROM t")) == 2  # after its commit
            timeout = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert timeout == db_engine.SQLITE_BUSY_TIMEOUT_MS  # set back after the polling
    finally:
        committer.join()
        other.close()


@pytest.mark.parametrize("ending", ["commit", "rollback", "error", "close", "invalidate"])
def test_the_lock_is_given_back_however_a_transaction_ends(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "db.sqlite"
    engine = _engine(path)
    sessions = make_session_factory(engine)
    session = sessions()
    session.execute(text("INSERT INTO t VALUES (1)"))
    assert _writer_held(path)
    if ending == "commit":
        session.commit()
    elif ending == "rollback":
        session.rollback()
    elif ending == "error":
        with pytest.raises(OperationalError):
            session.execute(text("INSERT INTO missing VALUES (1)"))
        session.rollback()
    elif ending == "close":
        session.close()
    else:
        session.connection().invalidate()
    session.close()
    assert not _writer_held(path)
    with sessions() as again:  # the next writer gets in
        again.execute(text("INSERT INTO t VALUES (2)"))
        again.commit()


def test_engines_on_one_file_share_the_lock_and_reads_do_not_take_it(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first, second = _engine(path), _engine(path)
    assert db_engine._writer_lock(str(path)) is db_engine._writer_lock(
        str(tmp_path / "." / "db.sqlite")
    )
    reads = make_session_factory(second, read_only=True)
    with make_session_factory(first)() as writing:
        writing.execute(text("INSERT INTO t VALUES (1)"))
        with reads() as reading:  # a read goes on beside the writer
            assert reading.scalar(text("SELECT count(*) FROM t")) == 0
        assert _writer_held(path)
        writing.commit()
    assert not _writer_held(path)
