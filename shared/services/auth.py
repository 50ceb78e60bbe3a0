"""Bearer keys → owners. A conversation belongs to the owner of the key that made it."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from sqlalchemy.orm import Session

from shared.errors import Unauthorized
from shared.services.api_keys import any_keys, find_key, hash_key

OPEN_OWNER = "open"


def owner_of(key: str) -> str:
    return hash_key(key)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; None when absent or malformed."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        return None
    return key


def authenticate(session: Session, authorization: str | None, *, env_keys: Sequence[str]) -> str:
    """The owner for an ``Authorization`` header: the hash of a live key.

    A key is live when its stored row is not revoked, or, with no row (not stored yet: the
    database was away at start), when it is one of ``PARLEY_API_KEYS`` (``env_keys``). The
    server is keyed when the store holds any key (revoked ones too: revoking every key never
    opens it) or ``env_keys`` is not empty; not keyed, everyone is the open owner. One indexed
    lookup per request, no cache: a revocation holds at once.
    """
    key = bearer_key(authorization)
    row = find_key(session, key) if key is not None else None
    if row is not None:
        if row.revoked_at is not None:
            raise Unauthorized("this API key has been revoked")
        return row.key_hash
    if key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in env_keys):
        return hash_key(key)
    if not env_keys and not any_keys(session):
        return OPEN_OWNER
    if not authorization:
        raise Unauthorized("missing bearer key: send 'Authorization: Bearer <key>'")
    if key is None:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    raise Unauthorized("unknown API key")
