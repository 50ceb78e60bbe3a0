"""What a ``parley`` command says when it cannot do its work: a mistake, or a database it
cannot use."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from shared.errors import ParleyError
from shared.settings import Settings


def db_reason(exc: DBAPIError) -> str:
    """The driver's reason, on one line whatever the driver wrote."""
    return " ".join(str(exc.orig).split())


def cannot_use_database(command: str, settings: Settings, exc: DBAPIError) -> str:
    """``parley <command>: cannot use the database at <url> (<reason>); ...`` (no password)."""
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    return (
        f"parley {command}: cannot use the database at {url} ({db_reason(exc)}); "
        "is it up and migrated (`parley migrate`)?"
    )


def run_command(command: str, settings: Settings, work: Callable[[], None]) -> int:
    """Run ``parley <command>``'s work: exit 0, or 1 with a one-line reason on stderr when the
    caller made a mistake or the database cannot be used."""
    try:
        work()
    except ParleyError as exc:
        print(f"parley {command}: {exc.message}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        print(cannot_use_database(command, settings, exc), file=sys.stderr)
        return 1
    return 0
