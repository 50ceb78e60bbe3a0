"""API keys over HTTP, the app in-process: a key made with the real `parley keys` CLI
authenticates and a revocation holds at once, another key's resources are 404, keys from
PARLEY_API_KEYS are stored (a revoked one stays revoked across restarts), and the API serves
open only until a key exists. The CLI itself and serving off loopback:
tests/integration/test_keys_cli.py."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete

from shared.db.engine import make_engine, make_session_factory
from shared.db.models import ApiKey, Conversation
from tests.parley_cli import bearer, cli_db, create_key, parley, rows  # noqa: F401 (cli_db: fixture)
from tests.sounds import audio_file, chirp
from tests.stack import Stack


def revoke(db_url: str, name: str) -> None:
    out = parley(db_url, "keys", "revoke", name)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Stacks made by a test (no workers), closed after it."""
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.close()


def api(stacks: list[Stack], db_url: str, tmp: Path, **settings: str) -> Stack:
    stack = Stack(db_url=db_url, tmp=tmp, model="unused", **settings)
    stacks.append(stack)
    return stack


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == {401: "unauthorized", 404: "not_found"}[status]
    return str(body["message"])


def test_a_created_key_authenticates_and_revocation_holds_at_once(
    db: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    alice, bob = create_key(db, "alice"), create_key(db, "bob")
    stack = api(stacks, db, tmp_path)
    client = stack.client
    assert "missing" in error(client.post("/v1/conversations", json={}), 401)
    malformed = client.post("/v1/conversations", json={}, headers={"Authorization": "Basic abc"})
    assert "malformed" in error(malformed, 401)
    assert "unknown" in error(client.post("/v1/conversations", json={}, headers=bearer("x")), 401)

    r = client.post("/v1/conversations", json={}, headers=bearer(alice))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    engine = make_engine(stack.settings)
    try:
        with make_session_factory(engine)() as session:
            owner = session.get_one(Conversation, cid).owner
    finally:
        engine.dispose()
    assert owner == hashlib.sha256(alice.encode()).hexdigest()
    bob_cid = client.post("/v1/conversations", json={}, headers=bearer(bob)).json()["id"]

    revoke(db, "alice")  # another process, while the API runs
    assert "revoked" in error(client.get(f"/v1/conversations/{cid}", headers=bearer(alice)), 401)
    assert client.get(f"/v1/conversations/{bob_cid}", headers=bearer(bob)).status_code == 200


def test_another_keys_conversation_turns_jobs_and_audio_are_404(
    db: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    alice, bob = bearer(create_key(db, "alice")), bearer(create_key(db, "bob"))
    client = api(stacks, db, tmp_path).client
    cid = client.post("/v1/conversations", json={}, headers=alice).json()["id"]
    provided = client.post(
        f"/v1/conversations/{cid}/turns",
        data={"speaker": "0", "text": "Mine."},
        files={"audio": ("a.wav", audio_file(chirp(0.2), 24_000), "audio/wav")},
        headers=alice,
    )
    assert provided.status_code == 201, provided.text
    generated = client.post(
        f"/v1/conversations/{cid}/turns", json={"speaker": 1, "text": "Hi."}, headers=alice
    )
    assert generated.status_code == 202, generated.text
    tid, job_id = provided.json()["id"], generated.json()["job_id"]
    turn = f"/v1/conversations/{cid}/turns/{tid}"
    assert client.get(f"{turn}/audio", headers=alice).status_code == 200
    assert client.get(f"{turn}/stream", headers=alice).status_code == 200
    for method, path in [
        ("GET", f"/v1/conversations/{cid}"),
        ("GET", f"/v1/conversations/{cid}/turns"),
        ("GET", turn),
        ("GET", f"{turn}/audio"),
        ("GET", f"{turn}/codes"),
        ("GET", f"{turn}/stream"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/conversations/{cid}"),
    ]:
        error(client.request(method, path, headers=bob), 404)
    error(
        client.post(
            f"/v1/conversations/{cid}/turns", json={"speaker": 0, "text": "x"}, headers=bob
        ),
        404,
    )
    r = client.get(f"/v1/conversations/{cid}", headers=alice)
    assert r.status_code == 200 and r.json()["turn_count"] == 2
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"


def test_env_keys_are_stored_and_a_revoked_one_stays_revoked_across_restarts(
    db: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    env = {"api_keys": "first-env-key, second-env-key"}
    first = api(stacks, db, tmp_path, **env)
    hashes = {
        hashlib.sha256(k.encode()).hexdigest(): k for k in ("first-env-key", "second-env-key")
    }
    stored = rows(db)
    assert {r.key_hash for r in stored} == set(hashes)
    assert all(r.name == f"env-{r.key_hash[:12]}" and r.revoked_at is None for r in stored)
    assert {r.prefix for r in stored} == {"fir", "sec"}  # never more than a quarter of a key
    r = first.client.post("/v1/conversations", json={}, headers=bearer("first-env-key"))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    kept = first.client.post("/v1/conversations", json={}, headers=bearer("second-env-key"))
    assert kept.status_code == 201

    name = next(r.name for r in stored if hashes[r.key_hash] == "first-env-key")
    revoke(db, name)
    revoked = first.client.get(f"/v1/conversations/{cid}", headers=bearer("first-env-key"))
    assert "revoked" in error(revoked, 401)
    first.close()
    stacks.remove(first)

    second = api(stacks, db, tmp_path, **env)  # a restart with the same PARLEY_API_KEYS
    assert [(r.name, r.revoked_at is None) for r in rows(db)] == [
        (r.name, r.name != name) for r in stored
    ]
    revoked = second.client.get(f"/v1/conversations/{cid}", headers=bearer("first-env-key"))
    assert "revoked" in error(revoked, 401)
    still_hash = hashlib.sha256(b"second-env-key").hexdigest()
    still = second.client.get(
        f"/v1/conversations/{kept.json()['id']}", headers=bearer("second-env-key")
    )
    assert still.status_code == 200
    # an env key whose row is missing (not stored yet) is still honoured
    engine = make_engine(second.settings)
    try:
        with make_session_factory(engine)() as session, session.begin():
            session.execute(delete(ApiKey).where(ApiKey.key_hash == still_hash))
    finally:
        engine.dispose()
    r = second.client.get(
        f"/v1/conversations/{kept.json()['id']}", headers=bearer("second-env-key")
    )
    assert r.status_code == 200, r.text
    # a key made with the CLI works beside the env keys
    cli_key = create_key(db, "cli")
    r = second.client.post("/v1/conversations", json={}, headers=bearer(cli_key))
    assert r.status_code == 201, r.text
    assert len(rows(db)) == 2


def test_the_api_starts_while_its_database_is_away(tmp_path: Path, stacks: list[Stack]) -> None:
    # PostgreSQL answers, but the database is not there: the keys cannot be read or stored.
    away = f"postgresql://postgres@127.0.0.1:5432/parley_absent_{uuid.uuid4().hex[:8]}"
    client = api(stacks, away, tmp_path, api_keys="env-key-while-away").client
    assert client.get("/healthz").status_code == 200
    assert "missing" in error(client.post("/v1/conversations", json={}), 401)  # never open
    r = client.post("/v1/conversations", json={}, headers=bearer("env-key-while-away"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"


def test_only_revoked_keys_still_means_keyed(db: str, tmp_path: Path, stacks: list[Stack]) -> None:
    key = create_key(db, "gone")
    revoke(db, "gone")
    client = api(stacks, db, tmp_path).client
    assert "missing" in error(client.post("/v1/conversations", json={}), 401)
    assert "revoked" in error(client.post("/v1/conversations", json={}, headers=bearer(key)), 401)
    assert "unknown" in error(client.get("/v1/jobs/x", headers=bearer("pk_other")), 401)


def test_open_without_keys_until_one_is_created(
    db: str, tmp_path: Path, stacks: list[Stack]
) -> None:
    client = api(stacks, db, tmp_path).client
    r = client.post("/v1/conversations", json={})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert client.get(f"/v1/conversations/{cid}", headers=bearer("anything")).status_code == 200
    key = create_key(db, "first")  # the running API is keyed from the next request on
    assert "missing" in error(client.get(f"/v1/conversations/{cid}"), 401)
    # the open owner's conversations are not the new key's
    error(client.get(f"/v1/conversations/{cid}", headers=bearer(key)), 404)
