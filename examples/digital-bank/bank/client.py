"""A small async HTTP/1.1 client with a keep-alive connection pool (stdlib asyncio only).

Used to call other services through the site's gateway. A request that fails on a pooled
connection the peer had already closed is retried once on a fresh connection, but only
when that cannot run it twice: idempotent methods, or a POST carrying an Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import time
from collections import deque
from typing import Any

IDLE_SECONDS = 30.0  # below the server side's keep-alive timeout, so we close first
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class UpstreamError(Exception):
    """The call failed before a complete response: ``kind`` is connect, timeout or protocol."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Stale(Exception):
    """The connection closed before any byte of the response arrived."""


class ClientResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return jsonlib.loads(self.body) if self.body else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError("protocol", f"response is not JSON: {exc}") from None


class _Conn:
    __slots__ = ("last_used", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    def usable(self) -> bool:
        fresh = time.monotonic() - self.last_used < IDLE_SECONDS
        return fresh and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


def split_base_url(base_url: str) -> tuple[str, int, str]:
    """``http://127.1.0.1:8080/prefix`` → ``("127.1.0.1", 8080, "/prefix")``."""
    if not base_url.startswith("http://"):
        raise ValueError(f"{base_url!r}: only http:// URLs are supported")
    hostport, _, path = base_url[len("http://") :].partition("/")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, "80"
    prefix = ("/" + path.rstrip("/")) if path else ""
    return host.strip("[]"), int(port), prefix


class HttpClient:
    def __init__(
        self, base_url: str, *, timeout: float = 2.0, max_idle: int = 64, agent: str = "bank"
    ) -> None:
        self.host, self.port, self.prefix = split_base_url(base_url)
        self.timeout = timeout
        self.max_idle = max_idle
        self.agent = agent
        self._idle: deque[_Conn] = deque()
        self._host_header = f"{self.host}:{self.port}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> ClientResponse:
        body = b"" if json is None else jsonlib.dumps(json, separators=(",", ":")).encode()
        head = self._head(method, path, body, json is not None, headers or {})
        retry_ok = method in IDEMPOTENT or any(
            name.lower() == "idempotency-key" for name in headers or {}
        )
        try:
            async with asyncio.timeout(timeout or self.timeout):
                for attempt in (1, 2):
                    conn, reused = await self._acquire()
                    try:
                        response, keep = await self._exchange(conn, head + body, method)
                    except _Stale:
                        conn.close()
                        if reused and retry_ok and attempt == 1:
                            continue
                        raise UpstreamError("connect", "connection closed by peer") from None
                    except BaseException:
                        conn.close()
                        raise
                    self._release(conn, keep)
                    return response
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"no response within {timeout or self.timeout}s"
            ) from None
        except OSError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}") from None
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamError("protocol", f"bad response: {exc!r}") from None
        raise AssertionError("unreachable")

    def _head(
        self, method: str, path: str, body: bytes, is_json: bool, headers: dict[str, str]
    ) -> bytes:
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"host: {self._host_header}",
            f"user-agent: {self.agent}",
            "accept: application/json",
        ]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        if is_json:
            lines.append("content-type: application/json")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def _acquire(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer), False

    def _release(self, conn: _Conn, keep: bool) -> None:
        if keep and len(self._idle) < self.max_idle:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def _exchange(self, conn: _Conn, data: bytes, method: str) -> tuple[ClientResponse, bool]:
        reader = conn.reader
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from None
            raise
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = "close" not in headers.get("connection", "").lower() and version == "HTTP/1.1"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
            keep = False
        return ClientResponse(status, headers, body), keep

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
