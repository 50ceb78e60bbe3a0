"""FastAPI dependencies: the app's state, a SQL session, the caller's owner id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.state import ApiState
from shared.auth import authenticate


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
    return authenticate(state.settings, authorization)


OwnerDep = Annotated[str, Depends(get_owner)]
