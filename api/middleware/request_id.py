"""A request id for every HTTP request: in each log line of the request and in its response.

The client's ``X-Request-ID`` is kept when it is sane (1 to 128 of ``A-Z a-z 0-9 . _ : -``), so a
caller's trace id carries through; otherwise a new one is made. The id is set in a context
variable for the request's whole life (``shared.logs``), which the threads running sync routes
inherit, and echoed in the response's ``X-Request-ID`` header.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import logs

HEADER = "X-Request-ID"
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def pick_request_id(offered: str | None) -> str:
    """The client's id when sane, else a fresh one (32 hex digits)."""
    if offered is not None and SANE_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI middleware (streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = pick_request_id(Headers(scope=scope).get(HEADER))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        token = logs.request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)
