"""Schemathesis over every operation of the real app's OpenAPI schema: no 5xx, responses as the
schema declares them, and every 4xx in the ``{"error": {"code", "message"}}`` shape.

The stack is real (SQLite, the machine's Redis under a prefix of its own, no worker: generated
turns stay queued). Requests carry a valid bearer key, so they get past auth, and path ids are
sometimes those of seeded rows (a conversation with a provided, a queued and a cancelled turn),
so the code behind the 404s runs too. Deterministic and bounded: hypothesis is derandomized.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from shared.settings import Settings
from tests.sounds import audio_file, chirp
from tests.stack import Stack, database

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = 40  # per operation and mode


def error_shape(ctx: Any, response: Any, case: Case) -> bool | None:
    """Every 4xx body is ``{"error": {"code": str, "message": str}}`` and nothing else."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    return True


def no_undeclared_server_error(ctx: Any, response: Any, case: Case) -> bool | None:
    """``not_a_server_error``, except for a 5xx the operation declares as an answer (/readyz's
    503 "not ready": no worker runs here); its body is held to the schema like any other."""
    if str(response.status_code) in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_undeclared_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]


def _seed(stack: Stack) -> dict[str, list[dict[str, str]]]:
    """Real rows, and for each operation the path ids that reach them."""
    cid = stack.conversation(metadata={"seed": True})
    provided = stack.upload(cid, 0, "hello there", audio_file(chirp(0.4), 24_000))
    queued = stack.say(cid, 1, "and hello to you")
    cancelled = stack.say(cid, 0, "never mind")
    r = stack.client.delete(f"/v1/jobs/{cancelled['job_id']}")
    assert r.status_code == 200, r.text
    doomed = stack.conversation()  # the one DELETE /v1/conversations/{id} may remove
    turns = [provided, queued, cancelled]
    # A stream of a queued turn waits for a worker that never comes: not one for the fuzzer.
    streamable = [provided, cancelled]
    return {
        "DELETE /v1/conversations/{conversation_id}": [{"conversation_id": doomed}],
        "/v1/conversations/{conversation_id}": [{"conversation_id": cid}],
        "/v1/conversations/{conversation_id}/turns": [{"conversation_id": cid}],
        "/v1/conversations/{conversation_id}/turns/{turn_id}/stream": [
            {"conversation_id": cid, "turn_id": t["id"]} for t in streamable
        ],
        "/v1/conversations/{conversation_id}/turns/{turn_id}": [
            {"conversation_id": cid, "turn_id": t["id"]} for t in turns
        ],
        "/v1/jobs/{job_id}": [{"job_id": str(t["job_id"])} for t in turns],
    }


def _real_ids_for(seeded: dict[str, list[dict[str, str]]], method: str, path: str) -> list[Any]:
    for key in (f"{method.upper()} {path}", path):
        if key in seeded:
            return seeded[key]
    if path.startswith("/v1/conversations/{conversation_id}/turns/{turn_id}/"):
        return seeded["/v1/conversations/{conversation_id}/turns/{turn_id}"]
    return []


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the app's schema (built without touching SQL)."""
    doc = create_app(Settings(database_url="sqlite://", api_keys=KEY)).openapi()
    return [(method.upper(), path) for path, ops in doc["paths"].items() for method in ops]


class FuzzTarget:
    def __init__(self, schema: BaseSchema, seeded: dict[str, list[dict[str, str]]]) -> None:
        self.schema = schema
        self.seeded = seeded

    def cases(self, method: str, path: str, mode: GenerationMode) -> st.SearchStrategy[Case]:
        """Generated cases, and the same with the path ids of seeded rows."""
        op = self.schema[path][method]
        real = _real_ids_for(self.seeded, method, path)
        return st.one_of(
            op.as_strategy(mode), *(op.as_strategy(mode, path_parameters=ids) for ids in real)
        )


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    tmp: Path = tmp_path_factory.mktemp("schema-fuzz")
    with database("sqlite", tmp) as url:
        stack = Stack(db_url=url, tmp=tmp, model="unused", api_keys=KEY, sync_wait_s=0.5)
        stack.client.headers.update(AUTH)
        try:
            seeded = _seed(stack)
            yield FuzzTarget(schemathesis.openapi.from_asgi("/openapi.json", stack.app), seeded)
        finally:
            stack.close()
    for leftover in tmp.glob("parley.db*"):
        leftover.unlink()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), _operations())
def test_operation(target: FuzzTarget, method: str, path: str, mode: GenerationMode) -> None:
    @given(case=target.cases(method, path, mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        response = case.call(headers=AUTH)
        case.validate_response(response, checks=CHECKS, headers=AUTH)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip(f"{method} {path} takes nothing that can be invalid")
