"""The request body limit (``max_request_bytes``) for every request, before any route reads it
(the limit and its rule: ``api.body_limits``).

A declared ``Content-Length`` over the limit is refused at once, unread. A body without one
(chunked) is counted as the app reads it, and the read that passes the limit raises
:class:`RequestTooLarge`: an HTTP exception, so FastAPI's own body parsing passes it on and the
app's handler answers 413 ``request_too_large``; one that escapes the app is answered here.
Routes keep their own, smaller limits (a turn's JSON, an upload) with their own codes.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.body_limits import BodyLimit
from api.presenters import error_response


class RequestTooLarge(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class RequestSizeLimit:
    def __init__(self, app: ASGIApp, *, limit: BodyLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        declared = Headers(scope=scope).get("content-length", "")
        if limit.declared_over(declared):
            message = limit.declared_message(declared)
            await error_response(413, limit.code, message)(scope, receive, send)
            return

        received = 0
        started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit.over(received):
                    raise RequestTooLarge(
                        limit.message(f"request body ran past the limit of {limit.max_bytes} bytes")
                    )
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except RequestTooLarge as exc:
            if started:
                raise
            await error_response(413, limit.code, exc.detail)(scope, receive, send)
