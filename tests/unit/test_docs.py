"""The docs stay true: ``docs/deploy.md``'s settings table names every setting, and only those,
each with its real default; every ``PARLEY_*`` name the docs mention exists; the OpenAPI schema
is browsable at ``/docs`` and lists every public operation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `PARLEY_([A-Z0-9_]+)` \| ([^|]+) \|", re.MULTILINE)
# Environment variables of the command-line client (parley say / render), not of the server.
CLIENT_ENV = {"PARLEY_URL", "PARLEY_API_KEY"}


def documented_defaults() -> dict[str, str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    table = text[text.index("## Every setting") :]
    rows = ROW.findall(table)
    names = [name.lower() for name, _ in rows]
    assert len(names) == len(set(names)), "a setting is listed twice"
    return {name.lower(): cell.strip() for name, cell in rows}


def written(default: Any) -> str | None:
    """A default as the table writes it; None where the table describes it in words."""
    if default is None:
        return None
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if default == "":
        return "empty"
    return f"`{default}`"


def test_the_settings_table_is_every_setting_with_its_default() -> None:
    documented = documented_defaults()
    fields = Settings.model_fields
    assert sorted(documented) == sorted(fields), (
        f"missing: {sorted(set(fields) - set(documented))}, "
        f"unknown: {sorted(set(documented) - set(fields))}"
    )
    for name, field in fields.items():
        want = written(field.default)
        if want is not None:
            assert documented[name] == want, (name, documented[name], want)


def test_every_setting_the_docs_name_exists() -> None:
    known = {f"PARLEY_{name.upper()}" for name in Settings.model_fields} | CLIENT_ENV
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named = set(re.findall(r"PARLEY_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
        assert named <= known, (path.name, sorted(named - known))


def test_the_openapi_schema_is_browsable_at_docs() -> None:
    with TestClient(create_app(Settings(database_url="sqlite://"))) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/conversations",
        "/v1/conversations/{conversation_id}/turns/{turn_id}/stream",
        "/v1/audio/speech",
        "/v1/csm/generate",
        "/v1/voices",
        "/v1/models",
    ]:
        assert path in paths, path
