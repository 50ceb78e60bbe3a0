"""How many conversations, turns and jobs a stack's SQL holds: for tests that check a request
left nothing behind. Used by tests/api/test_csm_sidecar.py and
tests/integration/test_csm_sidecar.py."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.db.engine import make_engine
from shared.db.models import Conversation, Job, Turn
from tests.stack import Stack


def counts(stack: Stack) -> tuple[int, int, int]:
    engine = make_engine(stack.settings)
    try:
        with engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.scalar(select(func.count()).select_from(t)) for t in (Conversation, Turn, Job)
            )
    finally:
        engine.dispose()
