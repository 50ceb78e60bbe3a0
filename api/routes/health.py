"""/healthz (the process lives) and /readyz (SQL, Redis and a consuming worker answer).

/readyz is 503 unless all three answer; its ``status`` says how bad: ``degraded`` while SQL
answers (turns are accepted and kept; they wait for Redis or a worker), ``unavailable`` when
the database is away."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.schemas.core import ReadyOut
from shared.contract.heartbeat import WorkerBeat
from shared.redis_io.heartbeats import live_beats

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with state.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"; the reason is reported
        checks["database"] = f"unavailable: {type(exc).__name__}"
    workers: list[WorkerBeat] = []
    try:
        state.redis.ping()
        checks["redis"] = "ok"
        workers = live_beats(state.redis, state.keys)
        checks["workers"] = f"{len(workers)} live" if workers else "none live"
        # A heartbeat that does not say whether it consumes is taken to consume.
        idle = sum(1 for w in workers if w.consuming is False)
        if idle:  # alive, but its consumer is not (yet, or any more) taking turns
            checks["workers"] += f", {idle} not consuming"
    except Exception as exc:  # as above
        checks["redis"] = f"unavailable: {type(exc).__name__}"
        checks["workers"] = "unknown (redis unavailable)"
    serving = any(w.consuming is not False for w in workers)
    ready = checks["database"] == "ok" and checks["redis"] == "ok" and serving
    status: Literal["ready", "degraded", "unavailable"] = (
        "ready" if ready else "degraded" if checks["database"] == "ok" else "unavailable"
    )
    model = workers[0].model if workers else None
    test_model = any(w.test_model for w in workers) if workers else None
    body = ReadyOut(
        ready=ready,
        status=status,
        checks=checks,
        workers=[w.to_dict() for w in workers],
        model=model,
        test_model=test_model,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
