"""Bearer keys: a conversation, its turns and jobs are visible only to the key that made it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, database


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Stack]:
    with database("sqlite", tmp_path) as url:
        stack = Stack(db_url=url, tmp=tmp_path, model="unused", api_keys="alpha-key, beta-key")
        try:
            yield stack
        finally:
            stack.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_unknown_key_is_401(api: Stack) -> None:
    r = api.client.post("/v1/conversations", json={})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = api.client.post("/v1/conversations", json={}, headers=bearer("gamma-key"))
    assert r.status_code == 401
    r = api.client.post("/v1/conversations", json={}, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_other_tenants_see_404(api: Stack) -> None:
    r = api.client.post("/v1/conversations", json={}, headers=bearer("alpha-key"))
    assert r.status_code == 201
    cid = r.json()["id"]
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        json={"speaker": 0, "text": "hi"},
        headers=bearer("alpha-key"),
    )
    assert r.status_code == 202
    turn = r.json()
    for method, path in [
        ("GET", f"/v1/conversations/{cid}"),
        ("GET", f"/v1/conversations/{cid}/turns"),
        ("GET", f"/v1/conversations/{cid}/turns/{turn['id']}"),
        ("GET", f"/v1/conversations/{cid}/turns/{turn['id']}/audio"),
        ("GET", f"/v1/jobs/{turn['job_id']}"),
        ("DELETE", f"/v1/jobs/{turn['job_id']}"),
        ("DELETE", f"/v1/conversations/{cid}"),
    ]:
        r = api.client.request(method, path, headers=bearer("beta-key"))
        assert r.status_code == 404, (method, path, r.text)
    r = api.client.post(
        f"/v1/conversations/{cid}/turns",
        json={"speaker": 0, "text": "x"},
        headers=bearer("beta-key"),
    )
    assert r.status_code == 404
    # the owner still sees everything, unchanged
    r = api.client.get(f"/v1/conversations/{cid}", headers=bearer("alpha-key"))
    assert r.status_code == 200 and r.json()["turn_count"] == 1
    r = api.client.get(f"/v1/jobs/{turn['job_id']}", headers=bearer("alpha-key"))
    assert r.json()["status"] == "queued"
