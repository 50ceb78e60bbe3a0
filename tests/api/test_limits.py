"""Limits and backpressure: each limit breached over HTTP gets its 4xx, names its setting, and
writes nothing. No worker runs here, so posted turns stay queued and fill the queue."""

from __future__ import annotations

import json
import logging
import select as io_select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvicorn
from pydantic import ValidationError
from sqlalchemy import func, select

from shared.db.models import Conversation, Job, Turn
from shared.services.auth import owner_of
from shared.settings import Settings
from tests.conftest import DB_KINDS
from tests.servers import free_port
from tests.sounds import audio_file, chirp
from tests.stack import Stack

A, B = {"Authorization": "Bearer a-key"}, {"Authorization": "Bearer b-key"}
MakeStack = Callable[..., Stack]


def snapshot(stack: Stack) -> dict[str, int]:
    """What a refused request must leave as it was: rows in SQL and the broker's queue."""
    with stack.app.state.parley.db.connect() as conn:
        counts = {
            model.__tablename__: conn.scalar(select(func.count()).select_from(model)) or 0
            for model in (Conversation, Turn, Job)
        }
    queue = f"{stack.settings.redis_prefix}:celery:{stack.settings.queue_name}"
    return {**counts, "broker_queue": stack.redis.llen(queue)}


def assert_refused(r: Any, status: int, code: str, setting: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    assert f"({setting})" in error["message"], error


def retry_after(r: Any) -> int:
    value = r.headers["Retry-After"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


def conversation(stack: Stack, headers: dict[str, str]) -> str:
    r = stack.client.post("/v1/conversations", json={}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def post_turn(stack: Stack, cid: str, headers: dict[str, str], text: str = "Hello.") -> Any:
    return stack.client.post(
        f"/v1/conversations/{cid}/turns", json={"speaker": 0, "text": text}, headers=headers
    )


def upload_turn(stack: Stack, cid: str, headers: dict[str, str]) -> Any:
    return stack.client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "1", "text": "My own words."},
        files={"audio": ("a.wav", audio_file(chirp(0.3), 24_000), "audio/wav")},
        headers=headers,
    )


# --- queued turns -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DB_KINDS)
def test_queue_full_per_key_is_429_and_writes_nothing(make_stack: MakeStack, kind: str) -> None:
    stack = make_stack(kind, workers=0, api_keys="a-key,b-key", max_queued_turns_per_key=3)
    first = conversation(stack, A)
    assert snapshot(stack)["broker_queue"] == 0
    turns = [post_turn(stack, first, A, f"Turn {i}.") for i in range(2)]
    turns.append(upload_turn(stack, first, A))  # a provided turn's encode job counts too
    assert [r.status_code for r in turns] == [202, 202, 201]
    assert snapshot(stack)["broker_queue"] == 1  # the conversation's head job is in the broker
    second = conversation(stack, A)  # a post here would be dispatched at once
    before = snapshot(stack)

    r = post_turn(stack, second, A)
    assert_refused(r, 429, "queue_full", "max_queued_turns_per_key")
    assert "3 turns queued or running" in r.json()["error"]["message"]
    assert retry_after(r) == stack.settings.retry_after_s
    assert_refused(upload_turn(stack, second, A), 429, "queue_full", "max_queued_turns_per_key")
    assert snapshot(stack) == before
    r = stack.client.get(f"/v1/conversations/{second}", headers=A)
    assert r.json()["turn_count"] == 0

    # another key's queue is its own
    assert post_turn(stack, conversation(stack, B), B).status_code == 202
    # a conversation that is not the caller's is a 404 first, full queue or not
    r = post_turn(stack, first, B)
    assert r.status_code == 404, r.text

    # a finished (here: cancelled) job frees its place
    assert stack.client.delete(f"/v1/jobs/{turns[0].json()['job_id']}", headers=A).is_success
    r = post_turn(stack, second, A)
    assert r.status_code == 202, r.text
    assert post_turn(stack, second, A).status_code == 429


@pytest.mark.parametrize("kind", DB_KINDS)
def test_concurrent_posts_of_one_key_never_pass_its_limit(make_stack: MakeStack, kind: str) -> None:
    stack = make_stack(kind, workers=0, api_keys="a-key", max_queued_turns_per_key=3)
    cids = [conversation(stack, A) for _ in range(8)]  # one each: no conversation lock shared
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda cid: post_turn(stack, cid, A).status_code, cids))
    assert codes == [202] * 3 + [429] * 5
    assert snapshot(stack)["jobs"] == 3


def test_server_busy_is_429_for_every_key(make_stack: MakeStack) -> None:
    stack = make_stack(
        "sqlite", workers=0, api_keys="a-key,b-key", max_queued_turns=3, retry_after_s=7
    )
    a, b = conversation(stack, A), conversation(stack, B)
    assert [post_turn(stack, cid, h).status_code for cid, h in [(a, A), (a, A), (b, B)]] == [
        202
    ] * 3
    before = snapshot(stack)
    for cid, headers in [(b, B), (a, A)]:
        r = post_turn(stack, cid, headers)
        assert_refused(r, 429, "server_busy", "max_queued_turns")
        assert retry_after(r) == 7
    assert snapshot(stack) == before


# --- conversations ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DB_KINDS)
def test_conversation_limit_is_409(make_stack: MakeStack, kind: str) -> None:
    stack = make_stack(kind, workers=0, api_keys="a-key,b-key", max_conversations_per_key=2)
    first, _ = conversation(stack, A), conversation(stack, A)
    before = snapshot(stack)
    r = stack.client.post("/v1/conversations", json={"metadata": {"x": 1}}, headers=A)
    assert_refused(r, 409, "conversation_limit", "max_conversations_per_key")
    assert snapshot(stack) == before
    conversation(stack, B)  # another key's count is its own
    assert stack.client.delete(f"/v1/conversations/{first}", headers=A).status_code == 204
    conversation(stack, A)


# --- rate limit -------------------------------------------------------------------------------


def test_rate_limit_per_key(make_stack: MakeStack) -> None:
    stack = make_stack("sqlite", workers=0, api_keys="a-key,b-key", rate_limit_per_minute=5)
    cid = conversation(stack, A)  # request 1
    for remaining in (3, 2, 1, 0):  # requests 2 to 5
        r = stack.client.get(f"/v1/conversations/{cid}", headers=A)
        assert r.status_code == 200, r.text
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == str(remaining)
    before = snapshot(stack)

    r = stack.client.get(f"/v1/conversations/{cid}", headers=A)
    assert_refused(r, 429, "rate_limited", "rate_limit_per_minute")
    assert 1 <= retry_after(r) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert_refused(post_turn(stack, cid, A), 429, "rate_limited", "rate_limit_per_minute")
    assert snapshot(stack) == before
    ttl = stack.redis.ttl(stack.keys.rate_limit(owner_of("a-key")))
    assert 1 <= ttl <= 60

    # the other key, unauthenticated requests and the health checks are not held back
    r = stack.client.get(f"/v1/conversations/{cid}", headers=B)
    assert r.status_code == 404 and r.headers["X-RateLimit-Remaining"] == "4"
    assert stack.client.post("/v1/conversations", json={}, headers=B).status_code == 201
    assert stack.client.get(f"/v1/conversations/{cid}").status_code == 401
    assert stack.client.get("/healthz").status_code == 200


def test_rate_limiter_lets_requests_through_without_redis(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.middleware.rate_limit")
    stack = make_stack(
        "sqlite",
        workers=0,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        rate_limit_per_minute=2,
    )
    responses = [stack.client.post("/v1/conversations", json={}) for _ in range(5)]
    assert [r.status_code for r in responses] == [201] * 5
    assert "X-RateLimit-Limit" not in responses[0].headers
    warnings = [r for r in caplog.records if r.name == "api.middleware.rate_limit"]
    assert len(warnings) == 1, warnings  # once per pause, not once per request
    assert warnings[0].levelno == logging.WARNING and "unreachable" in warnings[0].getMessage()
    assert snapshot_sql(stack) == 5


def snapshot_sql(stack: Stack) -> int:
    with stack.app.state.parley.db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Conversation)) or 0


# --- request body size ------------------------------------------------------------------------


@pytest.fixture
def small_bodies(make_stack: MakeStack) -> Iterator[Stack]:
    yield make_stack("sqlite", workers=0, max_upload_bytes=1000, max_request_bytes=100_000)


def test_declared_body_over_the_limit_is_413_unread(small_bodies: Stack) -> None:
    stack = small_bodies
    r = stack.client.post(
        "/v1/conversations",
        content=b"{" + b" " * 100_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert_refused(r, 413, "request_too_large", "max_request_bytes")
    assert "100002 bytes" in r.json()["error"]["message"]
    assert snapshot_sql(stack) == 0


def chunks(count: int, size: int = 1000) -> Iterator[bytes]:
    for _ in range(count):
        yield b" " * size


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/conversations", "application/json"),  # parsed by FastAPI
        ("/v1/conversations/{cid}/turns", "application/json"),  # read by the route
        ("/v1/conversations/{cid}/turns", "multipart/form-data; boundary=x"),  # a form
    ],
)
def test_chunked_body_over_the_limit_is_413(
    small_bodies: Stack, path: str, content_type: str
) -> None:
    stack = small_bodies
    cid = conversation(stack, {})
    r = stack.client.post(  # 150 kB against a 100 kB limit
        path.format(cid=cid), content=chunks(150), headers={"content-type": content_type}
    )
    assert "content-length" not in r.request.headers
    assert_refused(r, 413, "request_too_large", "max_request_bytes")
    assert snapshot(stack) == {"conversations": 1, "turns": 0, "jobs": 0, "broker_queue": 0}


@pytest.fixture
def live_server(small_bodies: Stack) -> Iterator[int]:
    """The stack's app behind a real uvicorn, on a port of its own."""
    port = free_port()
    config = uvicorn.Config(
        small_bodies.app, host="127.0.0.1", port=port, lifespan="off", ws="none", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_live_server_cuts_a_chunked_body_off(live_server: int) -> None:
    """Over a socket: the 413 comes while the client is still sending a 50 MB chunked body
    (the server stopped reading at the limit; only socket buffers took more)."""
    chunk = b"%x\r\n%s\r\n" % (1000, b" " * 1000)
    with socket.create_connection(("127.0.0.1", live_server), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/conversations HTTP/1.1\r\nHost: parley\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        while sent < 50_000_000 and not io_select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # it answered and closed meanwhile
                break
            sent += 1000
        response = b""
        while b"\r\n\r\n" not in response or not response.endswith(b"}}"):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), response[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert sent < 50_000_000


def test_chunked_body_within_the_limit_is_served(small_bodies: Stack) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"metadata": '
        yield b'{"k": "v"}}'

    r = small_bodies.client.post(
        "/v1/conversations", content=body(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == {"k": "v"}


def test_request_limit_must_hold_an_upload() -> None:
    assert Settings(max_upload_bytes=1000).request_bytes_limit == 1000 + 1024 * 1024
    with pytest.raises(ValidationError, match="max_request_bytes"):
        Settings(max_upload_bytes=1000, max_request_bytes=2000)
