"""The cap on request bodies, for every route of an app (``MAX_BODY_BYTES``).

A body announced larger (``Content-Length``) is refused with 413 before the app runs. A
body without a length (chunked) is counted as the app reads it; the read that passes the
cap raises :class:`BodyTooLarge`, an ``HTTPException`` the app answers as 413, so no more
than the cap (plus one chunk) is ever held.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alwayson.api.schemas import MAX_BODY_BYTES


def too_large(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes ({limit / 1024 / 1024:g} MiB), the "
        "API's limit; send a smaller body (a spec file is a few hundred KB at most)"
    )


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit), headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, read or announced."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = Headers(scope=scope).get("content-length", "")
        if announced.strip().isdigit() and int(announced) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": too_large(self.limit)}, status_code=413, headers={"Connection": "close"}
        )
        await response(scope, receive, send)
