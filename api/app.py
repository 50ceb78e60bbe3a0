"""The app factory: routes, error mapping and resources, built from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.routes import conversations, health, jobs, stream, turns
from api.state import ApiState
from shared.errors import ParleyError
from shared.settings import Settings

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ApiState.create(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_key_list:
            log.warning("PARLEY_API_KEYS is empty: the API runs open, without keys")
        yield
        state.close()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        summary="Conversational speech with Sesame's CSM: every turn spoken in context.",
        lifespan=lifespan,
    )
    app.state.parley = state
    for module in (conversations, turns, stream, jobs, health):
        app.include_router(module.router)

    @app.exception_handler(ParleyError)
    async def _parley_error(_request: Request, exc: ParleyError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "request"
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "invalid_input", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(OperationalError)
    async def _db_unavailable(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return error_response(503, "database_unavailable", "the database is unavailable")

    return app
