"""Relaying one backend's responses to clients: the protocol of a keep-alive connection to
a backend (its pool is :class:`alwayson.gateway.upstreams.Upstream`).

The response head is rewritten on its way (hop-by-hop headers dropped, ``Via`` and
``X-Request-Id`` added, framing adapted to the client: a body without length is chunked
for HTTP/1.1 clients and close-delimited for HTTP/1.0 ones); the body streams through
as it comes, and reading pauses while the client's write buffer is full. Trailers are
dropped. A backend's response is never trusted beyond the request it answers: bytes out
of turn close the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from alwayson.gateway.exchanges import Exchange
from alwayson.gateway.headers import (
    CHUNKED_END,
    CONNECTION,
    CONTENT_LENGTH,
    KEEP,
    RELAYED_STATUS_LINES,
    REQUEST_ID,
    RESPONSE_HEADER_NAMES,
    TRANSFER_ENCODING,
    UPGRADE,
    VIA,
    VIA_AND_REQUEST_ID,
    connection_tokens,
    drop_named,
    is_chunked,
    status_line,
)
from alwayson.gateway.retrying import Failure

if TYPE_CHECKING:
    from alwayson.gateway.upstreams import Upstream

log = logging.getLogger(__name__)

# A bound method: Python 3.11 cannot specialize ``imported.method(x)`` (see reading.py).
_known_response_header = RESPONSE_HEADER_NAMES.known.get


class InvalidUpstreamResponse(Exception):
    """Raised inside a parser callback; surfaces as an HttpParserCallbackError."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; relays one response at a time.

    After a ``101 Switching Protocols`` answer to an upgrade request it relays nothing
    more itself: the client side turns both connections into a tunnel
    (:mod:`alwayson.gateway.tunnels`).
    """

    __slots__ = (
        "body_left",
        "clock",
        "closed",
        "complete",
        "drop_names",
        "exchange",
        "got_bytes",
        "has_request_id",
        "headers",
        "idle_since",
        "informational",
        "length",
        "out",
        "parser",
        "reading_paused",
        "rechunk",
        "replace_parser",
        "reusable",
        "reused",
        "switching",
        "te_chunked",
        "transport",
        "until_close",
        "upgrade",
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
        self.length = -1  # the response's Content-Length; -1: none
        self.body_left = 0  # of a Content-Length body, still to relay
        self.has_request_id = False
        self.te_chunked = False
        self.drop_names: set[bytes] | None = None
        self.informational = False
        self.rechunk = False
        self.until_close = False
        self.upgrade: bytes | None = None
        self.switching = False

    # -- driven by the client side -------------------------------------------------------

    def begin(self, exchange: Exchange, payload: bytes, reused: bool) -> None:
        """Send a request head (and the body bytes already there) on this connection."""
        self.exchange = exchange
        exchange.conn = self
        self.reused = reused
        self.got_bytes = False
        self.complete = False
        # Reset here rather than in on_message_begin: one parser callback saved per response.
        self._expect_response()
        assert self.transport is not None
        self.transport.write(payload)

    def _expect_response(self) -> None:
        """Fresh state for a response head (a new request's, or the final one after a 1xx)."""
        self.headers = []
        self.length = -1
        self.body_left = 0
        self.has_request_id = False
        self.te_chunked = False
        self.drop_names = None
        self.rechunk = False
        self.until_close = False
        self.upgrade = None

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

    def detach(self) -> asyncio.Transport:
        """Hand the transport over to a tunnel: this protocol is done with it."""
        transport = self.transport
        assert transport is not None
        exchange = self.exchange
        if exchange is not None:
            exchange.conn = None
        self.exchange = None
        self.closed = True
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        return transport

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
        if self.body_left > 0:
            self._relay_body(exchange, data)
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if self.switching:
                # The rest of ``data`` already belongs to the new protocol.
                self.out.append(data[exc.args[0] :])
                exchange.client_transport.write(b"".join(self.out))
                self.out.clear()
                exchange.owner.upgraded(exchange, self)
                return
            self._invalid(exchange, "protocol switch without an Upgrade header")
            return
        except HttpParserError as exc:
            self._invalid(exchange, str(exc))
            return
        out = self.out
        if out:
            exchange.client_transport.write(b"".join(out))
            out.clear()
        if self.complete:
            self._finish(exchange)

    def _relay_body(self, exchange: Exchange, data: bytes) -> None:
        """The rest of a body whose length is known goes to the client as it came: no
        parser, no copy (big downloads are read 256 KiB at a time)."""
        left = self.body_left
        size = len(data)
        if size < left:
            self.body_left = left - size
            exchange.client_transport.write(data)
            return
        self.body_left = 0
        if size > left:
            data = data[:left]
            self.reusable = False  # bytes after the response: the backend talks out of turn
        else:
            self.reusable = self.parser.should_keep_alive()
        exchange.client_transport.write(data)
        self.complete = True
        self.replace_parser = True  # the parser was left in the middle of the body
        self._finish(exchange)

    def _invalid(self, exchange: Exchange, why: str) -> None:
        log.warning(
            "request %s: invalid response from %s: %s",
            exchange.request_id.decode("latin-1") if exchange.request_id else "-",
            self.upstream.address,
            why,
        )
        self.abandon()
        self.out.clear()
        exchange.owner.upstream_failed(exchange, Failure.INVALID_RESPONSE)

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

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailers of a chunked body land here too, after the head was written: what
        # they set is never read again, so they are dropped without a check.
        action = _known_response_header(name)
        if action is None:
            action = RESPONSE_HEADER_NAMES.classify(name)
        if action == KEEP:
            self.headers += (name, b": ", value, b"\r\n")
        elif action == CONTENT_LENGTH:
            self.length = int(value)  # digits only: llhttp refuses anything else
            self.headers += (name, b": ", value, b"\r\n")
        elif action == REQUEST_ID:
            self.has_request_id = True
            self.headers += (name, b": ", value, b"\r\n")
        elif action == TRANSFER_ENCODING:
            self.te_chunked = is_chunked(value)
        elif action == CONNECTION:
            tokens = connection_tokens(value)
            if tokens:
                self.drop_names = tokens if self.drop_names is None else self.drop_names | tokens
        elif action == UPGRADE:
            self.upgrade = value
        # Anything else (DROP) is a hop-by-hop header: it stays on this hop.

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                self._switch(exchange)
                return
            self.informational = True  # 100/103: not relayed; the final response follows
            self._expect_response()
            return
        exchange.status = status
        headers = self.headers
        if self.drop_names:
            headers = drop_named(headers, self.drop_names)
        if self.te_chunked and self.length >= 0:
            headers = drop_named(headers, {b"content-length"})
            self.length = -1
        close = exchange.close_after or not exchange.keep_alive
        out = self.out
        out.append(RELAYED_STATUS_LINES[status])  # llhttp reads three digits: < 1000
        out += headers
        if self.has_request_id or exchange.request_id is None:
            out.append(VIA)
        else:
            out += (VIA_AND_REQUEST_ID, exchange.request_id, b"\r\n")
        if exchange.is_head or status == 204 or status == 304:
            if exchange.is_head:
                # httptools cannot be told the response has no body: finish here and
                # give the connection a fresh parser.
                self.reusable = self.parser.should_keep_alive()
                self.complete = True
                self.replace_parser = True
        elif self.length >= 0:
            self.body_left = self.length
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

    def _switch(self, exchange: Exchange) -> None:
        """A 101: relay its head; the parser then stops with HttpParserUpgrade."""
        extras = exchange.extras
        if extras is None or not extras.upgrade or self.upgrade is None:
            raise InvalidUpstreamResponse("protocol switch was not asked for")
        exchange.status = 101
        headers = self.headers
        if self.drop_names:
            headers = drop_named(headers, self.drop_names)
        out = self.out
        out.append(status_line(101))
        out.extend(headers)
        out += (b"connection: upgrade\r\nupgrade: ", self.upgrade, b"\r\n", VIA)
        if not self.has_request_id and exchange.request_id is not None:
            out += (b"x-request-id: ", exchange.request_id, b"\r\n")
        out.append(b"\r\n")
        exchange.response_started = True
        self.switching = True

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return  # a body after a HEAD response's head: a broken backend's, not relayed
        if self.rechunk:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)
            self.body_left -= len(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.complete or self.switching:  # finished at its headers (HEAD, 101)
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
            upstream = self.upstream
            if upstream.retired or len(upstream.idle) >= upstream.max_idle:
                self.close()
            else:  # Upstream.release, in line
                self.idle_since = self.clock.now
                upstream.idle.append(self)
        else:
            self.close()
        exchange.owner.response_complete(exchange)
