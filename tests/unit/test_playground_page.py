"""The playground's page and files are served at ``/`` and ``/playground/``, outside the
OpenAPI schema. Driven in a browser: tests/ops/test_playground.py."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from shared.settings import Settings


def test_the_page_and_its_files_are_served_outside_the_schema() -> None:
    with TestClient(create_app(Settings(database_url="sqlite://"))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Parley playground" in page.text and "/playground/app.js" in page.text
        for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
            r = client.get(f"/playground/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert client.get("/playground/nothing.js").status_code == 404
        assert "/" not in client.get("/openapi.json").json()["paths"]
