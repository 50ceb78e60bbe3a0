"""``parley keys create | list | revoke``, and the rule that the API serves open (without
keys) only on a loopback address."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from parley.db_trouble import db_reason, run_command
from shared.db.engine import make_engine, make_session_factory
from shared.services.api_keys import any_keys, create_key, list_keys, revoke_key
from shared.settings import Settings


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def open_mode_refusal(settings: Settings, host: str) -> str | None:
    """Why the API must not start on ``host``: it has no key at all and is not on loopback."""
    if settings.api_key_list or is_loopback(host):
        return None
    try:
        with _session(settings, read_only=True) as session:
            if any_keys(session):
                return None
    except DBAPIError as exc:
        return (
            f"cannot read the API keys from the database ({db_reason(exc)}): is it up and "
            "migrated (`parley migrate`)?"
        )
    return (
        f"refusing to serve without API keys on {host}, which is not a loopback address: "
        "create a key with `parley keys create NAME` or set PARLEY_API_KEYS"
    )


@contextmanager
def _session(settings: Settings, *, read_only: bool = False) -> Iterator[Session]:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine, read_only=read_only)() as session:
            yield session
    finally:
        engine.dispose()


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is not None:  # SQLite gives back naive UTC
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _create(session: Session, args: argparse.Namespace) -> None:
    row, key = create_key(session, name=args.name)
    session.commit()
    print(key)
    print(
        f"created API key {row.name!r} ({row.prefix}…). This is the only time it is shown: "
        "store it now, it cannot be shown again.",
        file=sys.stderr,
    )


def _list(session: Session, _args: argparse.Namespace) -> None:
    rows = list_keys(session)
    if not rows:
        print("no API keys: the API serves open, and only on a loopback address")
        return
    table = [("NAME", "PREFIX", "CREATED", "REVOKED")]
    table += [(r.name, r.prefix, _when(r.created_at), _when(r.revoked_at)) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def _revoke(session: Session, args: argparse.Namespace) -> None:
    row, now = revoke_key(session, name=args.name)
    session.commit()
    if now:
        print(f"revoked API key {row.name!r} ({row.prefix}…): it is refused from now on")
    else:
        print(f"API key {row.name!r} was already revoked at {_when(row.revoked_at)}")


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    action: Callable[[Session, argparse.Namespace], None] = args.keys_action

    def work() -> None:
        with _session(settings) as session:
            action(session, args)

    return run_command("keys", settings, work)


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (stored hashed in SQL)")
    keys.set_defaults(func=cmd_keys)
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key and print it, once")
    create.add_argument("name")
    create.set_defaults(keys_action=_create)
    actions.add_parser("list", help="names, prefixes, dates; never the keys").set_defaults(
        keys_action=_list
    )
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name")
    revoke.set_defaults(keys_action=_revoke)
