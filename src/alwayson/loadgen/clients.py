"""A lean keep-alive HTTP/1.1 client on asyncio protocols and ``httptools``, for load.

httpx spends about 0.7 ms of CPU on a request; a load generator must spend a small part
of that, or it measures itself. This client does only what a load test needs: one pool of
keep-alive connections per origin (``http`` or ``https``), one request at a time on a
connection, a deadline per request covering the wait for a connection, connecting,
sending and reading (checked every ``SWEEP`` seconds, not with a timer per request),
bodies by Content-Length, chunked or until the server closes, and ``Connection: close``
either way.

Errors, all ``ClientError`` with a ``kind`` the recorder counts by:

- ``ConnectFailed``: ``connect refused``, ``connect timeout``, ``connect error``
- ``RequestTimeout``: ``timeout`` (no whole response before the deadline)
- ``ConnectionReset``: ``reset`` (the connection broke or closed before a whole response)
- ``BadResponse``: ``bad response`` (not HTTP/1.x the parser accepts)

A request that fails because a kept-alive connection was closed by the server just as it
was reused (nothing of a response read yet) is retried once on a new connection when its
method is idempotent, as browsers and httpx do.

``Transport`` is the small interface ``Session`` needs; ``FakeTransport`` serves requests
from a function in memory, for tests of the layers above.
"""

from __future__ import annotations

import asyncio
import collections
import json as jsonlib
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httptools

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
USER_AGENT = "alwayson-loadtest"
SWEEP = 0.05  # seconds between looks for requests past their deadline


class ClientError(Exception):
    """A request that got no (whole) response; ``kind`` names why, for the figures."""

    kind = "error"

    def __init__(self, detail: str = "", kind: str | None = None) -> None:
        if kind is not None:
            self.kind = kind
        super().__init__(f"{self.kind}: {detail}" if detail else self.kind)


class ConnectFailed(ClientError):
    kind = "connect error"


class RequestTimeout(ClientError):
    kind = "timeout"


class ConnectionReset(ClientError):
    kind = "reset"


class BadResponse(ClientError):
    kind = "bad response"


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case; repeated ones joined by ``,``."""

    __slots__ = ("_folded", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._folded: dict[str, str] | None = None

    def _fold(self) -> dict[str, str]:
        if self._folded is None:
            folded: dict[str, str] = {}
            for name, value in self._raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                folded[key] = f"{folded[key]}, {text}" if key in folded else text
            self._folded = folded
        return self._folded

    def __getitem__(self, name: str) -> str:
        return self._fold()[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fold())

    def __len__(self) -> int:
        return len(self._fold())

    def raw(self) -> list[tuple[bytes, bytes]]:
        return list(self._raw)


class Response:
    """A whole response: ``status_code``, ``headers``, ``content`` (bytes), ``text``,
    ``json()``, ``is_success``."""

    __slots__ = ("_headers", "content", "http_version", "status_code")

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[bytes, bytes]] | Mapping[str, str] | None = None,
        content: bytes = b"",
        http_version: str = "1.1",
    ) -> None:
        self.status_code = status_code
        if isinstance(headers, Mapping):
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self._headers = headers or []
        self.content = content
        self.http_version = http_version

    @classmethod
    def with_json(cls, status_code: int, data: Any) -> Response:
        """A response carrying ``data`` as JSON (for fakes and tests)."""
        body = jsonlib.dumps(data).encode()
        return cls(status_code, {"content-type": "application/json"}, body)

    @property
    def headers(self) -> Headers:
        return Headers(self._headers)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        charset = "utf-8"
        kind = self.headers.get("content-type", "")
        for part in kind.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        return self.content.decode(charset, errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class Transport(Protocol):
    """What a ``Session`` sends through. ``url`` is a path (on the base URL) or absolute."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Response: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class SentRequest:
    """A request as ``FakeTransport`` hands it to its handler."""

    method: str
    url: str  # absolute
    path: str  # path and query
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.content)


Handler = Callable[[SentRequest], Response | Awaitable[Response]]


@dataclass
class FakeTransport:
    """Answers every request with ``handler(request)`` (which may raise a ClientError)."""

    handler: Handler
    base_url: str = "http://target"
    closed: bool = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        origin, path = _split(self.base_url, url, params)
        body, extra = _body(content, json)
        sent = SentRequest(
            method.upper(),
            origin.url + path,
            path,
            {**{k.lower(): v for k, v in (headers or {}).items()}, **extra},
            body,
        )
        answer = self.handler(sent)
        if isinstance(answer, Response):
            return answer
        return await answer

    async def aclose(self) -> None:
        self.closed = True


# -- URLs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        default = 80 if self.scheme == "http" else 443
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def host_header(self) -> str:
        return self.url.split("://", 1)[1]


def parse_origin(url: str) -> tuple[Origin, str]:
    """The origin of an absolute http(s) URL and its path with query (ValueError if bad)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), path


def _split(base: str, url: str, params: Mapping[str, str] | None) -> tuple[Origin, str]:
    if url.startswith(("http://", "https://")):
        origin, path = parse_origin(url)
    else:
        origin, prefix = parse_origin(base)
        prefix = prefix.split("?", 1)[0].rstrip("/")
        path = prefix + (url if url.startswith("/") else "/" + url)
    if params:
        path += ("&" if "?" in path else "?") + urlencode(params)
    return origin, path


def _body(content: bytes | None, json: Any) -> tuple[bytes, dict[str, str]]:
    if json is not None:
        return jsonlib.dumps(json).encode(), {"content-type": "application/json"}
    return content or b"", {}


# -- the client ------------------------------------------------------------------------


@dataclass
class HttpClient:
    """Keep-alive HTTP/1.1 with a pool of at most ``max_connections`` per origin."""

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # whole request: pool wait, connect, send, response
    max_connections: int = 100
    connect_timeout: float | None = None  # None: the request's deadline
    ssl_context: ssl.SSLContext | None = None
    _pools: dict[Origin, _Pool] = field(default_factory=dict, init=False, repr=False)
    _static: bytes = field(default=b"", init=False, repr=False)
    _base: tuple[Origin, str] = field(init=False, repr=False)
    _waiting: set[_Connection] = field(default_factory=set, init=False, repr=False)
    _sweeper: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    # The encoded head of a plain request (no headers or body of its own) by method and
    # URL: a URL list repeats a few, and building one costs more than sending it.
    _heads: dict[tuple[str, str], tuple[Origin, bytes]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        origin, prefix = parse_origin(self.base_url)  # refuse a bad base URL now
        self._base = (origin, prefix.split("?", 1)[0].rstrip("/"))
        lines = [f"User-Agent: {USER_AGENT}", "Accept: */*"]
        names = {"user-agent": 0, "accept": 1}
        for name, value in self.headers.items():
            _check_header(name, value)
            if name.lower() in names:
                lines[names[name.lower()]] = f"{name}: {value}"
            else:
                lines.append(f"{name}: {value}")
        self._static = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        plain = headers is None and content is None and json is None and params is None
        cached = self._heads.get((method, url)) if plain else None
        if cached is not None:
            origin, data = cached
        else:
            origin, data = self._encode(method, url, headers, content, json, params)
            if plain and len(self._heads) < 1024:
                self._heads[(method, url)] = (origin, data)
        method = method.upper()
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(origin, self)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep)
        retry = method in IDEMPOTENT
        while True:
            conn = pool.take() or await pool.acquire(deadline)
            reused = conn.served > 0
            try:
                response = await conn.exchange(data, method == "HEAD", deadline, self._waiting)
            except _Stale:
                pool.discard(conn)
                if reused and retry:
                    retry = False
                    continue
                raise ConnectionReset("the server closed the connection") from None
            except BaseException:
                pool.discard(conn)
                raise
            pool.release(conn)
            return response

    def _encode(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        json: Any,
        params: Mapping[str, str] | None,
    ) -> tuple[Origin, bytes]:
        if params is None and url.startswith("/"):
            origin, prefix = self._base
            path = prefix + url
        else:
            origin, path = _split(self.base_url, url, params)
        method = method.upper()
        body, extra = _body(content, json)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n".encode("latin-1")]
        head.append(self._static)
        for name, value in (*extra.items(), *(headers or {}).items()):
            _check_header(name, value)
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        return origin, b"".join(head) + body

    def _sweep(self) -> None:
        """Fail the requests past their deadline; again in SWEEP while any is waiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self._waiting if c.deadline <= now]:
            conn.expire()
        self._sweeper = loop.call_later(SWEEP, self._sweep) if self._waiting else None

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r}: no line breaks (and no ':' in the name)")


class _Stale(Exception):
    """The connection closed before any byte of the response (maybe safe to retry)."""


class _Pool:
    """Connections to one origin: idle ones reused last-in first-out, waiters in order."""

    def __init__(self, origin: Origin, client: HttpClient) -> None:
        self.origin = origin
        self.client = client
        self.idle: list[_Connection] = []
        self.open = 0  # connections open or being opened
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    def take(self) -> _Connection | None:
        """An idle connection, if one is usable (no waiting)."""
        while self.idle:
            conn = self.idle.pop()
            if conn.usable:
                return conn
            self.open -= 1
        return None

    async def acquire(self, deadline: float) -> _Connection:
        conn = self.take()
        if conn is not None:
            return conn
        if self.open < self.client.max_connections:
            self.open += 1
            try:
                return await self._connect(deadline)
            except BaseException:
                self.open -= 1
                self._wake()
                raise
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            handed = await waiter
        except asyncio.CancelledError:
            self._hand_back(waiter)
            raise
        finally:
            timer.cancel()
        if handed is None:  # a slot freed up: open a connection of our own
            try:
                return await self._connect(deadline)
            except BaseException:
                self.open -= 1
                self._wake()
                raise
        return handed

    def _hand_back(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter was cancelled just after it was handed a connection or a slot."""
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            return
        handed = waiter.result()
        if handed is None:
            self.open -= 1
            self._wake()
        else:
            self.release(handed)

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            context = self.client.ssl_context or ssl.create_default_context()
        budget = deadline - loop.time()
        if self.client.connect_timeout is not None:
            budget = min(budget, self.client.connect_timeout)
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                _, conn = await loop.create_connection(
                    _Connection,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"{origin.url}", kind="connect timeout") from None
        except ConnectionRefusedError:
            raise ConnectFailed(f"{origin.url}", kind="connect refused") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{origin.url}: {exc}") from None
        return conn

    def release(self, conn: _Connection) -> None:
        if not conn.usable:
            self.discard(conn)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        conn.close()
        self.open -= 1
        self._wake()

    def _wake(self) -> None:
        """A slot is free: the first waiter opens a connection in it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionReset("the client was closed"))


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(RequestTimeout("no connection free before the deadline"))


class _Connection(asyncio.Protocol):
    """One connection; one request at a time; the response parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.deadline = 0.0
        self.waiting: set[_Connection] | None = None  # the client's, while a request waits
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.started = False  # a byte of the current response arrived
        self.complete = False
        self.until_close = False  # a body that ends when the server closes
        self.has_length = False  # Content-Length or chunked
        self.head_request = False
        self.keep_alive = True
        self.lost = False
        self.served = 0

    @property
    def usable(self) -> bool:
        return not self.lost and self.keep_alive and self.transport is not None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.keep_alive = False  # bytes nobody asked for: never reuse this one
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the server switched protocols"))
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._fail(BadResponse(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is None or self.waiter.done():
            return
        if self.until_close and self.status:
            self._finish()
        elif not self.started:
            self._fail(_Stale())
        else:
            self._fail(ConnectionReset("the connection closed in the middle of a response"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            self.has_length = True
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self.has_length = self.has_length or b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if 100 <= self.status < 200:
            self.headers = []
            self.status = 0
            self.has_length = False
            return
        if self.head_request:
            self._finish()
            self.parser = httptools.HttpResponseParser(self)
            return
        self.until_close = not self.has_length and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status:
            self._finish()

    # -- used by the pool

    def exchange(
        self, data: bytes, head_request: bool, deadline: float, waiting: set[_Connection]
    ) -> asyncio.Future[Response]:
        """Send one request; a future of its response (fails with a ClientError). The
        connection is in ``waiting`` until then, for the client's deadline sweep."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.status, self.headers, self.body = 0, [], []
        self.started = self.complete = self.until_close = self.has_length = False
        self.head_request = head_request
        self.deadline = deadline
        self.waiting = waiting
        waiting.add(self)
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True
        self._done()

    def expire(self) -> None:
        self._fail(RequestTimeout("no whole response before the deadline"))

    def _done(self) -> asyncio.Future[Response] | None:
        waiter, self.waiter = self.waiter, None
        if self.waiting is not None:
            self.waiting.discard(self)
            self.waiting = None
        return waiter

    def _finish(self) -> None:
        self.complete = True
        waiter = self._done()
        if waiter is not None and not waiter.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result(Response(self.status, self.headers, body))
            self.served += 1

    def _fail(self, error: BaseException) -> None:
        self.keep_alive = False
        waiter = self._done()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
