"""A plain ASGI application that knows nothing of alwayson: uvicorn serves it as it is.

``GET /healthz`` answers ``ok``; every other path answers JSON saying which instance
served it, from the environment the platform gives every process (or ``-`` without one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

IDENTITY = ("ALWAYSON_SERVICE", "ALWAYSON_INSTANCE", "ALWAYSON_SITE", "ALWAYSON_VERSION")


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await _answer(send, 200, b"ok\n", b"text/plain")
        return
    who = {name.removeprefix("ALWAYSON_").lower(): os.environ.get(name, "-") for name in IDENTITY}
    body = {**who, "method": scope["method"], "path": scope["path"], "server": "uvicorn"}
    await _answer(send, 200, json.dumps(body).encode() + b"\n", b"application/json")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
