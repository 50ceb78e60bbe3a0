"""Waiting out a database outage instead of losing a turn.

A worker that cannot reach SQL keeps what it has (a turn's codes and audio in memory, a job it
was given) and tries again with growing pauses, up to ``PARLEY_DB_RETRY_S``. Only connection
trouble is retried (``OperationalError``, ``InterfaceError``); anything else is a real error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_DOWN_ERRORS = (OperationalError, InterfaceError)
FIRST_PAUSE_S = 0.25
LONGEST_PAUSE_S = 5.0


def retry_db(call: Callable[[], T], *, what: str, patience_s: float) -> T:
    """``call()``, again after each connection failure until ``patience_s`` have passed; then
    the last failure is raised."""
    deadline = time.monotonic() + patience_s
    pause = FIRST_PAUSE_S
    while True:
        try:
            return call()
        except DB_DOWN_ERRORS as exc:
            if time.monotonic() + pause > deadline:
                log.error("%s: the database stayed unavailable; giving up: %s", what, exc.orig)
                raise
            log.warning("%s: database unavailable (%s); retrying in %.2g s", what, exc.orig, pause)
            time.sleep(pause)
            pause = min(2 * pause, LONGEST_PAUSE_S)
