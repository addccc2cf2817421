"""Connections to backends: one keep-alive pool per backend address, and the protocol that
reads a backend's response and relays it to the client.

An :class:`Upstream` outlives route table swaps (it is keyed by address), so its idle
connections, its count of outstanding requests and its passive ejection survive a push
that keeps the backend.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import cast

from httptools import HttpParserError, HttpResponseParser

from alwayson.gateway.exchanges import CoarseClock, Exchange
from alwayson.gateway.headers import (
    CHUNKED_END,
    CONNECTION,
    CONTENT_LENGTH,
    RESPONSE_HEADER_ACTIONS,
    TRANSFER_ENCODING,
    connection_tokens,
    drop_named,
    is_chunked,
    is_dropped_by_prefix,
    status_line,
)
from alwayson.gateway.retrying import Failure

log = logging.getLogger(__name__)


class InvalidUpstreamResponse(Exception):
    """Raised inside a parser callback; surfaces as an HttpParserCallbackError."""


class Upstream:
    """A backend address: its idle connections, its load and its ejection."""

    __slots__ = (
        "_connecting",
        "clock",
        "connect_timeout",
        "ejected_until",
        "host",
        "idle",
        "max_idle",
        "outstanding",
        "port",
        "retired",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        clock: CoarseClock,
        connect_timeout: float = 3.0,
        max_idle: int = 256,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.outstanding = 0
        self.ejected_until = 0.0
        self.retired = False
        self._connecting: set[asyncio.Task[UpstreamConnection]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection (LIFO keeps few connections warm)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.retired or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.clock.now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def connect(self, exchange: Exchange) -> None:
        """Open a new connection for ``exchange``; its owner hears through ``connected``."""
        task = asyncio.get_running_loop().create_task(self._open())
        self._connecting.add(task)
        task.add_done_callback(partial(self._opened, exchange))

    async def _open(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                partial(UpstreamConnection, self), self.host, self.port
            )
        return conn

    def _opened(self, exchange: Exchange, task: asyncio.Task[UpstreamConnection]) -> None:
        self._connecting.discard(task)
        conn: UpstreamConnection | None = None
        if not task.cancelled():
            error = task.exception()
            if error is None:
                conn = task.result()
            elif not isinstance(error, OSError | TimeoutError):
                log.error("connect to %s failed unexpectedly: %r", self.address, error)
        exchange.owner.connected(exchange, conn)

    def close_idle(self, idle_before: float) -> None:
        """Close idle connections unused since ``idle_before`` (coarse clock time)."""
        keep = []
        for conn in self.idle:
            if conn.idle_since < idle_before or conn.closed:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    def retire(self) -> None:
        """No route uses this address any more: close idle connections now, busy ones when
        their response is done."""
        self.retired = True
        for conn in self.idle:
            conn.close()
        self.idle = []

    async def aclose(self) -> None:
        self.retire()
        tasks = list(self._connecting)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; relays one response at a time."""

    __slots__ = (
        "clock",
        "closed",
        "complete",
        "drop_names",
        "exchange",
        "got_bytes",
        "has_length",
        "headers",
        "idle_since",
        "informational",
        "out",
        "parser",
        "reading_paused",
        "reason",
        "rechunk",
        "replace_parser",
        "reusable",
        "reused",
        "te_chunked",
        "transport",
        "until_close",
        "upstream",
    )

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.clock = upstream.clock
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.complete = False
        self.reusable = False
        self.replace_parser = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.out: list[bytes] = []
        self.headers: list[bytes] = []
        self.reason = b""
        self.has_length = False
        self.te_chunked = False
        self.drop_names: set[bytes] | None = None
        self.informational = False
        self.rechunk = False
        self.until_close = False

    # -- driven by the client side -------------------------------------------------------

    def begin(self, exchange: Exchange, payload: bytes, reused: bool) -> None:
        """Send a request head (and the body bytes already there) on this connection."""
        self.exchange = exchange
        exchange.conn = self
        self.reused = reused
        self.got_bytes = False
        self.complete = False
        assert self.transport is not None
        self.transport.write(payload)

    def send(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(data))

    def abandon(self) -> None:
        """Drop the exchange mid-flight (client gone, timeout): the connection is useless."""
        exchange = self.exchange
        if exchange is not None:
            exchange.conn = None
        self.exchange = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # A backend talking out of turn cannot be trusted with the next request.
            self.close()
            return
        self.got_bytes = True
        exchange.touched = self.clock.now
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            log.warning("invalid response from %s: %s", self.upstream.address, exc)
            self.abandon()
            self.out.clear()
            exchange.owner.upstream_failed(exchange, Failure.INVALID_RESPONSE)
            return
        out = self.out
        if out:
            exchange.client_transport.write(b"".join(out))
            out.clear()
        if self.complete:
            self._finish(exchange)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is None:
            self.upstream.forget(self)
            return
        self.exchange = None
        exchange.conn = None
        if not self.got_bytes:
            failure = Failure.STALE_CONNECTION if self.reused else Failure.CLOSED_BEFORE_RESPONSE
            exchange.owner.upstream_failed(exchange, failure)
        elif self.until_close and exchange.response_started:
            # A response without length or chunking ends when the backend closes.
            if self.rechunk:
                exchange.client_transport.write(CHUNKED_END)
            exchange.owner.response_complete(exchange)
        else:
            exchange.owner.upstream_failed(exchange, Failure.BROKEN_RESPONSE)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.owner.pause_upload()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.owner.resume_upload()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.has_length = False
        self.te_chunked = False
        self.drop_names = None
        self.rechunk = False
        self.until_close = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        action = RESPONSE_HEADER_ACTIONS.get(lower)
        if action is None:
            if not is_dropped_by_prefix(lower):
                self.headers += (name, b": ", value, b"\r\n")
        elif action == CONTENT_LENGTH:
            self.has_length = True
            self.headers += (name, b": ", value, b"\r\n")
        elif action == TRANSFER_ENCODING:
            self.te_chunked = is_chunked(value)
        elif action == CONNECTION:
            tokens = connection_tokens(value)
            if tokens:
                self.drop_names = tokens if self.drop_names is None else self.drop_names | tokens
        # Anything else (DROP) is a hop-by-hop header: it stays on this hop.

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise InvalidUpstreamResponse("protocol switch was not asked for")
            self.informational = True  # 100/103: not relayed; the final response follows
            return
        exchange.status = status
        headers = self.headers
        if self.drop_names:
            headers = drop_named(headers, self.drop_names)
        if self.te_chunked and self.has_length:
            headers = drop_named(headers, {b"content-length"})
            self.has_length = False
        close = exchange.close_after or exchange.owner.closing or not exchange.keep_alive
        out = self.out
        out.append(status_line(status, self.reason))
        out.extend(headers)
        if exchange.is_head or status == 204 or status == 304:
            if exchange.is_head:
                # httptools cannot be told the response has no body: finish here and
                # give the connection a fresh parser.
                self.reusable = self.parser.should_keep_alive()
                self.complete = True
                self.replace_parser = True
        elif self.has_length:
            pass
        elif not exchange.http10:
            out.append(b"transfer-encoding: chunked\r\n")
            self.rechunk = True
            self.until_close = not self.te_chunked
        else:
            close = True
            self.until_close = not self.te_chunked
        if close:
            exchange.keep_alive = False
            out.append(b"connection: close\r\n\r\n")
        elif exchange.http10:
            out.append(b"connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        exchange.response_started = True

    def on_body(self, body: bytes) -> None:
        if self.rechunk:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.complete:  # a HEAD response already finished at its headers
            return
        if self.rechunk:
            self.out.append(CHUNKED_END)
        self.reusable = self.parser.should_keep_alive()
        self.complete = True

    # -- end of a response ---------------------------------------------------------------

    def _finish(self, exchange: Exchange) -> None:
        self.exchange = None
        exchange.conn = None
        self.complete = False
        if self.replace_parser:
            self.parser = HttpResponseParser(self)
            self.replace_parser = False
        if self.reading_paused:
            self.resume_reading()
        # A backend may answer before taking the whole request body (an early 401, 413):
        # the rest would be read as the next request, so such a connection is not reused.
        if self.reusable and not self.until_close and exchange.body_done and not exchange.unsent:
            self.upstream.release(self)
        else:
            self.close()
        exchange.owner.response_complete(exchange)
