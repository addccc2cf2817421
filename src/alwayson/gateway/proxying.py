"""The client side of the proxy: parse requests, pick a backend, relay, retry, answer errors.

One :class:`ClientConnection` per accepted connection. Requests are handled one at a time
in arrival order (pipelined ones wait, and reading pauses while they do); the response
side lives in :mod:`alwayson.gateway.upstreams`. Everything here is callbacks on the
event loop: no task, no coroutine and no per-request allocation beyond the
:class:`~alwayson.gateway.exchanges.Exchange` and the bytes it relays.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from alwayson.gateway.balancing import choose_target
from alwayson.gateway.exchanges import Exchange, ProxyContext
from alwayson.gateway.headers import (
    CHUNKED_END,
    CONNECTION,
    CONTENT_LENGTH,
    CONTINUE_RESPONSE,
    EXPECT,
    FORWARDED_FOR,
    HOST,
    REQUEST_HEADER_ACTIONS,
    REQUEST_ID,
    TRANSFER_ENCODING,
    UPGRADE,
    connection_tokens,
    drop_named,
    error_response,
    is_chunked,
)
from alwayson.gateway.matching import normalize_host, request_path
from alwayson.gateway.retrying import REPLAY_LIMIT, Failure, Retry, decide_retry
from alwayson.gateway.upstreams import UpstreamConnection

log = logging.getLogger(__name__)

# Why reading from a client is paused (bits; reading resumes when none is left).
_UPLOADING = 1  # the backend connection's write buffer is full
_BUFFERING = 2  # body bytes pile up while a backend connection opens
_PIPELINING = 4  # a later request waits for the current one

_BUFFER_LIMIT = REPLAY_LIMIT


class ClientConnection(asyncio.Protocol):
    """A client's keep-alive connection to the gateway."""

    __slots__ = (
        "active",
        "client_ip",
        "closed",
        "closing",
        "ctx",
        "current",
        "parser",
        "paused",
        "queue",
        "touched",
        "transport",
        "write_paused",
    )

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.client_ip = b"unknown"
        self.current: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being proxied
        self.queue: deque[Exchange] = deque()  # pipelined behind ``active``
        self.closing = ctx.draining
        self.closed = False
        self.paused = 0
        self.write_paused = False
        self.touched = ctx.clock.now

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode()
        self.ctx.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.clients.discard(self)
        exchanges = list(self.queue)
        if self.active is not None:
            exchanges.insert(0, self.active)
        self.active = None
        self.current = None
        self.queue.clear()
        for exchange in exchanges:
            self._cancel(exchange)

    def eof_received(self) -> bool:
        """A client may half-close after its request: answer it, then close."""
        self.closing = True
        # Nothing in flight: False lets the transport close.
        return self.active is not None or bool(self.queue)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.closing = True  # the upgrade request itself is answered with a 501 below
        except HttpParserError as exc:
            self._bad_request(exc)
            return
        exchange = self.active
        if exchange is None:
            return
        conn = exchange.conn
        if conn is not None:
            if exchange.unsent:
                conn.send(exchange.take_unsent())
                exchange.touched = self.ctx.clock.now
        elif not exchange.dispatched:
            self._dispatch(exchange)
        elif exchange.unsent_size > _BUFFER_LIMIT:
            self._pause(_BUFFERING)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.active
        if exchange is not None and exchange.conn is not None:
            exchange.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.active
        if exchange is not None and exchange.conn is not None:
            exchange.conn.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Exchange(self, self.transport, monotonic())

    def on_url(self, url: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        exchange.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        lower = name.lower()
        action = REQUEST_HEADER_ACTIONS.get(lower)
        if action is None:
            if not lower.startswith(b"proxy-"):
                exchange.head_parts += (name, b": ", value, b"\r\n")
        elif action == HOST:
            exchange.host = value
            exchange.head_parts += (name, b": ", value, b"\r\n")
        elif action == CONTENT_LENGTH:
            exchange.content_length = value.strip()
        elif action == TRANSFER_ENCODING:
            exchange.chunked = is_chunked(value)
        elif action == FORWARDED_FOR:
            previous = exchange.forwarded_for
            exchange.forwarded_for = value if previous is None else previous + b", " + value
        elif action == REQUEST_ID:
            if value:
                exchange.request_id = value
        elif action == EXPECT:
            exchange.expect_continue = value.strip().lower() == b"100-continue"
        elif action == CONNECTION:
            tokens = connection_tokens(value)
            if tokens:
                extra = exchange.extra_drop
                exchange.extra_drop = tokens if extra is None else extra | tokens
        elif action == UPGRADE:
            exchange.upgrade = True
        # Anything else is a hop-by-hop header: it stays on this hop.

    def on_headers_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        ctx = self.ctx
        parser = self.parser
        method = parser.get_method()
        exchange.method = method
        exchange.is_head = method == b"HEAD"
        exchange.keep_alive = parser.should_keep_alive()
        exchange.http10 = parser.get_http_version() == "1.0"
        if self.closing:
            exchange.close_after = True
        request_id = exchange.request_id
        if request_id is None:
            request_id = exchange.request_id = ctx.request_ids.next()
        if self.active is None:
            self.active = exchange
        else:
            self.queue.append(exchange)
            self._pause(_PIPELINING)
        if (exchange.upgrade or method == b"CONNECT") and parser.should_upgrade():
            exchange.local_status = 501
            exchange.local_message = "protocol upgrades (WebSocket, CONNECT) are not supported"
            return
        matcher = ctx.matcher
        route = matcher.match(normalize_host(exchange.host), request_path(exchange.url))
        if route is None:
            if matcher.size:
                exchange.local_status = 404
                exchange.local_message = "no route for this host and path"
            else:
                exchange.local_status = 503
                exchange.local_message = "this gateway has no route table yet"
            return
        exchange.route = route
        parts = exchange.head_parts
        if exchange.extra_drop:
            parts = drop_named(parts, exchange.extra_drop)
        previous = exchange.forwarded_for
        parts += (
            b"x-forwarded-for: ",
            previous + b", " + self.client_ip if previous else self.client_ip,
            b"\r\nx-request-id: ",
            request_id,
            b"\r\n",
        )
        if exchange.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif exchange.content_length is not None:
            parts += (b"content-length: ", exchange.content_length, b"\r\n\r\n")
        else:
            parts.append(b"\r\n")
        exchange.head = b"%s %s HTTP/1.1\r\n%s" % (method, exchange.url, b"".join(parts))

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        if exchange.local_status:
            return  # answered by the gateway: the body goes nowhere
        if exchange.chunked:
            exchange.unsent += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            exchange.unsent.append(body)
        exchange.unsent_size += len(body)

    def on_message_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        self.current = None
        if exchange.chunked and not exchange.local_status:
            exchange.unsent.append(CHUNKED_END)
        exchange.body_done = True

    # -- proxying ------------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        exchange.dispatched = True
        if exchange.local_status:
            self._answer_locally(exchange)
            return
        if exchange.expect_continue and not exchange.body_done:
            self.transport.write(CONTINUE_RESPONSE)
        self._attempt(exchange)

    def _attempt(self, exchange: Exchange) -> None:
        route = exchange.route
        assert route is not None
        ctx = self.ctx
        target = choose_target(route, ctx.clock.now, exchange.exclude)
        if target is None:
            exchange.local_status = 503
            exchange.local_message = f"no usable backend for service {route.service}"
            self._answer_locally(exchange)
            return
        exchange.target = target
        upstream = target.upstream
        upstream.outstanding += 1
        exchange.outstanding = True
        exchange.touched = ctx.clock.now
        conn = None if exchange.fresh_only else upstream.take_idle()
        if conn is not None:
            self._begin(exchange, conn, reused=True)
        else:
            upstream.connect(exchange)
            if exchange.unsent_size > _BUFFER_LIMIT:
                self._pause(_BUFFERING)

    def _begin(self, exchange: Exchange, conn: UpstreamConnection, reused: bool) -> None:
        if exchange.unsent:
            payload = b"".join([exchange.head, *exchange.take_unsent()])
        else:
            payload = exchange.head
        conn.begin(exchange, payload, reused)
        if self.write_paused:
            conn.pause_reading()
        if self.paused & _BUFFERING:
            self._resume(_BUFFERING)

    def connected(self, exchange: Exchange, connection: UpstreamConnection | None) -> None:
        if exchange.cancelled:
            if connection is not None:
                connection.upstream.release(connection)
            return
        if connection is None:
            self.upstream_failed(exchange, Failure.CONNECT_FAILED)
            return
        self._begin(exchange, connection, reused=False)

    def upstream_failed(self, exchange: Exchange, failure: Failure) -> None:
        target = exchange.target
        assert target is not None
        if exchange.outstanding:
            target.upstream.outstanding -= 1
            exchange.outstanding = False
        if exchange.cancelled:
            return
        ctx = self.ctx
        if failure is Failure.CONNECT_FAILED:
            target.upstream.ejected_until = ctx.clock.now + ctx.eject_seconds
            ctx.metrics.count_connect_error(target.service, target.id)
        if exchange.response_started:
            # Part of the response is with the client already: cut the connection so the
            # truncation cannot pass for a complete response.
            log.warning(
                "request %s to %s: %s after the response started",
                exchange.request_id.decode() if exchange.request_id else "-",
                target.id,
                failure.value,
            )
            target.stats.observe(502, monotonic() - exchange.started_at)
            self.transport.abort()
            return
        decision = decide_retry(
            exchange.method,
            failure,
            retries_used=exchange.retries,
            stale_retries_used=exchange.stale_retries,
            body_replayable=exchange.replay is not None,
        )
        if decision is not Retry.NO:
            ctx.metrics.count_retry(target.service)
            if decision is Retry.FRESH_CONNECTION:
                exchange.stale_retries += 1
                exchange.fresh_only = True
            else:
                exchange.retries += 1
                exchange.exclude = target
                exchange.fresh_only = False
            exchange.rewind()
            self._attempt(exchange)
            return
        exchange.local_status = 504 if failure is Failure.TIMEOUT else 502
        exchange.local_message = f"backend {target.id} of service {target.service}: {failure.value}"
        log.warning(
            "request %s: %s",
            exchange.request_id.decode() if exchange.request_id else "-",
            exchange.local_message,
        )
        self._answer_locally(exchange)

    def response_complete(self, exchange: Exchange) -> None:
        target = exchange.target
        assert target is not None
        if exchange.outstanding:
            target.upstream.outstanding -= 1
            exchange.outstanding = False
        target.stats.observe(exchange.status, monotonic() - exchange.started_at)
        self._done(exchange)

    def pause_upload(self) -> None:
        self._pause(_UPLOADING)

    def resume_upload(self) -> None:
        self._resume(_UPLOADING)

    # -- answers of the gateway itself ---------------------------------------------------

    def _answer_locally(self, exchange: Exchange) -> None:
        status = exchange.local_status
        close = (
            not exchange.keep_alive
            or self.closing
            or exchange.close_after
            or not exchange.body_done
        )
        request_id = exchange.request_id or b"-"
        self.transport.write(
            error_response(
                status, exchange.local_message, request_id, close=close, head_only=exchange.is_head
            )
        )
        if exchange.target is not None:
            stats = exchange.target.stats
        elif exchange.route is not None:
            stats = exchange.route.unavailable_stats
        else:
            stats = self.ctx.no_route_stats
        stats.observe(status, monotonic() - exchange.started_at)
        exchange.keep_alive = not close
        self._done(exchange)

    def _bad_request(self, exc: HttpParserError) -> None:
        if self.active is None and not self.closed:
            request_id = self.ctx.request_ids.next()
            self.transport.write(
                error_response(400, f"malformed request: {exc}", request_id, close=True)
            )
            self.ctx.no_route_stats.observe(400, 0.0)
        self._close()

    # -- connection lifecycle ------------------------------------------------------------

    def _done(self, exchange: Exchange) -> None:
        """The exchange is over; go on with the next request or close."""
        self.touched = self.ctx.clock.now
        self.active = None
        self._resume(_UPLOADING)
        if not exchange.keep_alive or self.closing or not exchange.body_done:
            self._close()
            return
        queue = self.queue
        if queue:
            following = queue.popleft()
            self.active = following
            if not queue:
                self._resume(_PIPELINING)
            self._dispatch(following)

    def _cancel(self, exchange: Exchange) -> None:
        exchange.cancelled = True
        conn = exchange.conn
        if conn is not None:
            conn.abandon()
        if exchange.outstanding and exchange.target is not None:
            exchange.target.upstream.outstanding -= 1
            exchange.outstanding = False

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def start_draining(self) -> None:
        """Finish what is in flight, then close; an idle connection closes now."""
        self.closing = True
        if self.active is None and self.current is None:
            self._close()

    def check_timeouts(self, now: float, upstream_timeout: float, idle_timeout: float) -> None:
        """Called by the gateway's sweeper a few times a second (coarse clock)."""
        exchange = self.active
        if exchange is None:
            if now - self.touched > idle_timeout:
                self._close()
            return
        conn = exchange.conn
        if conn is not None and now - exchange.touched > upstream_timeout:
            conn.abandon()
            self.upstream_failed(exchange, Failure.TIMEOUT)
