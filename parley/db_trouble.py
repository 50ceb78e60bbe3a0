"""What a ``parley`` command says when it cannot use the database."""

from __future__ import annotations

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

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
