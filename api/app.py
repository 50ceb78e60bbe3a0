"""The app factory: routes, error mapping and resources, built from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError
from sqlalchemy.exc import DatabaseError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.body_limits import request_limit
from api.deps import check_rate_limit
from api.middleware.http_metrics import HttpMetrics, HttpMetricsMiddleware
from api.middleware.rate_limit import RateLimitHeaders
from api.middleware.request_id import RequestIdMiddleware
from api.middleware.request_size import RequestSizeLimit
from api.presenters import error_response
from api.resources import ApiState
from api.routes import (
    conversations,
    csm,
    health,
    jobs,
    live,
    metrics,
    openai_speech,
    stream,
    turns,
    voices,
)
from api.routes.playground import mount_playground
from api.schemas.core import ErrorOut
from api.services.service_metrics import ServiceCollector
from shared.errors import ParleyError, TooManyRequests
from shared.services.api_keys import any_keys, bootstrap_env_keys
from shared.settings import Settings

log = logging.getLogger(__name__)

# Declared on every operation, in place of FastAPI's own 422 body (which Parley never sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorOut, "description": "the caller's mistake: an error naming it"}
}


def store_env_keys(state: ApiState) -> bool | None:
    """Store the keys of ``PARLEY_API_KEYS`` that have no row yet; whether the server is keyed
    (None when the database cannot say: env keys are still honoured, and stored next start)."""
    try:
        with state.sessions() as session:
            for row in bootstrap_env_keys(session, state.settings.api_key_list):
                log.info("stored PARLEY_API_KEYS key %s… as API key %r", row.prefix, row.name)
            session.commit()
            return any_keys(session)
    except DBAPIError as exc:
        log.error("cannot read or store API keys at start: %s", exc.orig)
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = ApiState.create(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if store_env_keys(state) is False:
            log.warning(
                "no API keys (PARLEY_API_KEYS is empty and none was made with `parley keys "
                "create`): the API runs open, without keys"
            )
        yield
        state.close()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        summary="Conversational speech with Sesame's CSM: every turn spoken in context.",
        lifespan=lifespan,
    )
    app.state.parley = state
    # One registry per app (not prometheus_client's global one): HTTP metrics of this process
    # and the service-wide ones read from SQL and Redis at scrape time.
    app.state.metrics_registry = registry = CollectorRegistry()
    registry.register(ServiceCollector(state))
    app.add_middleware(RequestSizeLimit, limit=request_limit(settings))
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(HttpMetricsMiddleware, metrics=HttpMetrics(registry))
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of a request has its id
    # /v1: per-key rate limit, after auth
    for module in (conversations, turns, stream, jobs, voices, openai_speech, csm):
        app.include_router(
            module.router, dependencies=[Depends(check_rate_limit)], responses=ERROR_RESPONSES
        )
    app.include_router(live.router)  # a WebSocket: it authenticates itself
    app.include_router(health.router, responses=ERROR_RESPONSES)
    app.include_router(metrics.router)
    mount_playground(app)

    @app.exception_handler(ParleyError)
    async def _parley_error(_request: Request, exc: ParleyError) -> JSONResponse:
        headers = None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(exc.status_code, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "request"
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "invalid_input", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(DatabaseError)
    async def _db_error(_request: Request, exc: DatabaseError) -> JSONResponse:
        # Connection trouble (and SQLite's "file is not a database") is an outage: 503, and
        # the transaction was rolled back. Other database errors are bugs: 500.
        if isinstance(exc, OperationalError | InterfaceError) or type(exc) is DatabaseError:
            log.error("database unavailable: %s", exc.orig)
            return error_response(
                503, "database_unavailable", "the database is unavailable; try again shortly"
            )
        log.exception("database error")
        return error_response(500, "internal_error", "internal database error")

    @app.exception_handler(RedisError)
    async def _redis_unavailable(_request: Request, exc: RedisError) -> JSONResponse:
        log.error("redis unavailable: %s", exc)
        return error_response(
            503, "redis_unavailable", "live audio is unavailable (Redis is away); try again shortly"
        )

    return app
