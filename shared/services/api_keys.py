"""The API key store: keys live in SQL as sha256 hashes, made by ``parley keys`` or bootstrapped
from ``PARLEY_API_KEYS``. A key's hash is the owner of the conversations it makes."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, utcnow
from shared.errors import Conflict, InvalidInput, NotFound

KEY_PREFIX = "pk_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}")
DISPLAY_CHARS = 8


def hash_key(key: str) -> str:
    """The sha256 hex of a key: what the store keeps, and the owner id of its conversations."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def display_prefix(key: str) -> str:
    """The first 8 characters, but never more than a quarter of the key (short env keys)."""
    return key[: min(DISPLAY_CHARS, len(key) // 4)]


def find_key(session: Session, key: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))


def any_keys(session: Session) -> bool:
    """Whether the store holds any key, revoked ones included: then the server is keyed."""
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name)))


def add_key(session: Session, *, name: str, key: str) -> ApiKey:
    """Store ``key`` under ``name`` (flushed, not committed)."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid key name {name!r}: use 1 to 64 letters, digits or . _ @ : + - "
            "(starting with a letter or digit)"
        )
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"an API key named {name!r} already exists")
    row = ApiKey(name=name, key_hash=hash_key(key), prefix=display_prefix(key))
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # the same name or key, committed by someone else meanwhile
        raise Conflict(f"an API key named {name!r} (or this key) already exists") from exc
    return row


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """A new random key stored under ``name``: the row, and the key (its only appearance)."""
    key = generate_key()
    return add_key(session, name=name, key=key), key


def revoke_key(session: Session, *, name: str) -> tuple[ApiKey, bool]:
    """Revoke the key named ``name``: the row, and whether it was revoked just now."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name).with_for_update())
    if row is None:
        raise NotFound(f"no API key named {name!r}")
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = utcnow()
    session.flush()
    return row, True


def bootstrap_env_keys(session: Session, keys: Iterable[str]) -> list[ApiKey]:
    """Store each key of ``PARLEY_API_KEYS`` that has no row yet (named ``env-<hash head>``);
    a key whose row exists, revoked or not, is left as it is. Returns the rows added."""
    added = []
    for key in keys:
        key_hash = hash_key(key)
        if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash)) is not None:
            continue
        name = f"env-{key_hash[:12]}"
        if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
            name = f"env-{key_hash[:32]}"  # someone took the short name for a key of their own
        try:
            with session.begin_nested():
                row = ApiKey(name=name, key_hash=key_hash, prefix=display_prefix(key))
                session.add(row)
        except IntegrityError:
            continue  # another API process stored it at the same moment
        added.append(row)
    return added
