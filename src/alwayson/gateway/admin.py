"""The admin HTTP endpoint of a gateway (the controller's side door).

- ``GET /healthz``  200 ``{"status":"ok","generation":N,"site":...}``; 503 while draining
- ``GET /metrics``  Prometheus text
- ``GET /routes``   the table in use
- ``PUT /routes``   a new table; ``Authorization: Bearer <token>``. 401 without the right
  token, 400 on a bad table, 409 when its generation is older than the one in use, 503
  while the gateway hands over to a successor or drains (push again: the successor, or
  the routes file it starts from, gets the table).

While the gateway drains every answer carries ``Connection: close``, so a client with a
keep-alive connection to the old process reconnects to whoever listens now.

A tiny HTTP/1.1 server on httptools (keep-alive, one request at a time per connection);
it is not on the data path and favours clarity over speed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from httptools import HttpParserError, HttpRequestParser
from prometheus_client import CONTENT_TYPE_LATEST

from alwayson.gateway.headers import STATUS_LINES
from alwayson.gateway.routes import InvalidRouteTable, RouteTable, StaleRouteTable, parse_table

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024
JSON = "application/json"


class GatewayControls(Protocol):
    """What the admin endpoint needs from a running gateway."""

    @property
    def site(self) -> str: ...

    @property
    def generation(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    @property
    def accepting_pushes(self) -> bool: ...

    def current_table(self) -> RouteTable: ...

    def render_metrics(self) -> bytes: ...

    async def push_table(self, table: RouteTable) -> None:
        """Persist then install; raises StaleRouteTable, InvalidRouteTable or OSError."""


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, document: object, **headers: str) -> AdminResponse:
    body = json.dumps(document).encode() + b"\n"
    return AdminResponse(status, body, JSON, tuple(headers.items()))


class AdminApp:
    """Routes admin requests; ``read_token`` returns the bearer token (None: pushes are
    refused), read at each push so the token file can be rotated without a restart."""

    def __init__(self, gateway: GatewayControls, read_token: Callable[[], str | None]) -> None:
        self._gateway = gateway
        self._read_token = read_token
        self.push_lock = asyncio.Lock()  # held by a push, and by a handover as it starts

    @property
    def closing(self) -> bool:
        return self._gateway.draining

    async def handle(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> AdminResponse:
        path = path.split(b"?", 1)[0]
        gateway = self._gateway
        if path == b"/healthz":
            if method not in (b"GET", b"HEAD"):
                return _not_allowed("GET")
            status = "draining" if gateway.draining else "ok"
            document = {"status": status, "generation": gateway.generation, "site": gateway.site}
            return json_response(503 if gateway.draining else 200, document)
        if path == b"/metrics":
            if method not in (b"GET", b"HEAD"):
                return _not_allowed("GET")
            return AdminResponse(200, gateway.render_metrics(), CONTENT_TYPE_LATEST)
        if path == b"/routes":
            if method in (b"GET", b"HEAD"):
                text = gateway.current_table().model_dump_json(indent=2)
                return AdminResponse(200, text.encode() + b"\n")
            if method == b"PUT":
                return await self._put_routes(headers.get(b"authorization"), body)
            return _not_allowed("GET, PUT")
        return json_response(404, {"error": f"no such admin endpoint: {path.decode('latin-1')}"})

    async def _put_routes(self, authorization: bytes | None, body: bytes) -> AdminResponse:
        gateway = self._gateway
        try:
            token = self._read_token()
        except OSError as exc:
            log.error("cannot read the admin token: %s", exc)
            return json_response(500, {"error": f"cannot read the admin token: {exc}"})
        if token is None:
            return json_response(
                403, {"error": "route updates are disabled: the gateway has no --token-file"}
            )
        expected = b"Bearer " + token.encode()
        if authorization is None or not hmac.compare_digest(authorization.strip(), expected):
            return json_response(
                401,
                {"error": "missing or wrong bearer token"},
                **{"www-authenticate": 'Bearer realm="alwayson-gateway"'},
            )
        try:
            table = parse_table(body)
        except InvalidRouteTable as exc:
            return json_response(400, {"error": str(exc)})
        if table.site != gateway.site:
            message = f"this table is for site {table.site!r}; this gateway serves {gateway.site!r}"
            return json_response(400, {"error": message})
        async with self.push_lock:
            if not gateway.accepting_pushes:
                return json_response(
                    503, {"error": "this gateway is handing over or draining: push again"}
                )
            try:
                await gateway.push_table(table)
            except StaleRouteTable as exc:
                return json_response(409, {"error": str(exc), "generation": exc.current})
            except InvalidRouteTable as exc:
                return json_response(400, {"error": str(exc)})
            except OSError as exc:
                log.error("cannot save the route table: %s", exc)
                return json_response(500, {"error": f"cannot save the route table: {exc}"})
        return json_response(200, {"status": "ok", "generation": table.generation})


def _not_allowed(allowed: str) -> AdminResponse:
    return json_response(405, {"error": "method not allowed"}, allow=allowed)


def render(response: AdminResponse, *, keep_alive: bool, head_only: bool) -> bytes:
    lines = [
        STATUS_LINES.get(response.status, b"HTTP/1.1 %d \r\n" % response.status),
        f"content-type: {response.content_type}\r\n".encode(),
        b"content-length: %d\r\n" % len(response.body),
        b"cache-control: no-store\r\n",
    ]
    for name, value in response.headers:
        lines.append(f"{name}: {value}\r\n".encode())
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(response.body)
    return b"".join(lines)


class AdminServer:
    """Owns the admin listener and the tasks answering its requests."""

    def __init__(self, app: AdminApp) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def start(
        self, host: str | None = None, port: int | None = None, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port``, or on ``sock`` (a listener taken over)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: AdminConnection(self), sock=sock)
        else:
            assert host is not None and port is not None
            self._server = await loop.create_server(
                lambda: AdminConnection(self), host, port, reuse_address=True
            )

    def listening_fd(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].fileno()

    def close_listener(self) -> None:
        """Accept no more connections; the open ones are served until ``aclose``."""
        if self._server is not None:
            self._server.close()

    @property
    def closing(self) -> bool:
        return self.app.closing

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for transport in list(self.connections):
            transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


class AdminConnection(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._parser = HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._server.connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except HttpParserError as exc:
            if self._transport is not None:
                response = json_response(400, {"error": f"malformed request: {exc}"})
                self._transport.write(render(response, keep_alive=False, head_only=False))
                self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._too_large = True
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        method = self._parser.get_method()
        keep_alive = self._parser.should_keep_alive()
        transport.pause_reading()  # one request at a time, answered in order
        request = (method, self._url, self._headers, b"".join(self._body), self._too_large)
        task = asyncio.get_running_loop().create_task(self._answer(transport, keep_alive, request))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def _answer(
        self,
        transport: asyncio.Transport,
        keep_alive: bool,
        request: tuple[bytes, bytes, dict[bytes, bytes], bytes, bool],
    ) -> None:
        method, url, headers, body, too_large = request
        if too_large:
            response = json_response(413, {"error": f"body larger than {MAX_BODY} bytes"})
            keep_alive = False
        else:
            try:
                response = await self._server.app.handle(method, url, headers, body)
            except Exception as exc:  # an admin bug must not kill the gateway
                log.exception("admin request %s %r failed", method.decode(), url)
                response = json_response(500, {"error": f"internal error: {exc}"})
        if transport.is_closing():
            return
        keep_alive = keep_alive and not self._server.closing
        transport.write(render(response, keep_alive=keep_alive, head_only=method == b"HEAD"))
        if keep_alive:
            transport.resume_reading()
        else:
            transport.close()
