"""The playground: a page at ``/`` (plain HTML and JS over the public API) and its files under
``/playground``. Outside the OpenAPI schema; no key needed to load it (its calls send one)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND = Path(__file__).resolve().parent.parent / "playground"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(PLAYGROUND / "index.html", media_type="text/html")


def mount_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")
