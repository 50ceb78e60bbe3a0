"""Bearer keys → owners. A conversation belongs to the owner of the key that made it."""

from __future__ import annotations

import hashlib
import hmac

from shared.errors import Unauthorized
from shared.settings import Settings

OPEN_OWNER = "open"


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(settings: Settings, authorization: str | None) -> str:
    """The owner for an ``Authorization`` header; the open owner when no keys are configured."""
    keys = settings.api_key_list
    if not keys:
        return OPEN_OWNER
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("missing bearer key: send 'Authorization: Bearer <key>'")
    presented = authorization[7:].strip()
    for key in keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            return owner_of(key)
    raise Unauthorized("unknown bearer key")
