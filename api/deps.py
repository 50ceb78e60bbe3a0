"""FastAPI dependencies: the app's state, a SQL session, the caller's owner id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.middleware.rate_limit import SCOPE_KEY
from api.resources import ApiState
from shared.errors import TooManyRequests
from shared.services.auth import authenticate


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.parley
    return state


StateDep = Annotated[ApiState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_read_session(state: StateDep) -> Iterator[Session]:
    with state.reads() as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session)]


def get_owner(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> str:
    with state.reads() as session:
        return authenticate(session, authorization, env_keys=state.settings.api_key_list)


OwnerDep = Annotated[str, Depends(get_owner)]


def check_rate_limit(request: Request, state: StateDep, owner: OwnerDep) -> None:
    """Count the request against its owner's ``rate_limit_per_minute`` (after auth, so an
    unauthenticated request is a 401 and counts for nobody); 429 past the limit."""
    verdict = state.rate_limiter.hit(owner)
    if verdict is None:
        return
    request.scope[SCOPE_KEY] = verdict  # for the X-RateLimit-* headers
    if not verdict.allowed:
        raise TooManyRequests(
            f"too many requests: the limit is {verdict.limit} a minute "
            f"(rate_limit_per_minute); retry in {verdict.reset_s} s",
            code="rate_limited",
            retry_after_s=verdict.reset_s,
        )
