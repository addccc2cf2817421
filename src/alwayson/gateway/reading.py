"""Reading requests off a client connection: the httptools callbacks that turn bytes into
:class:`~alwayson.gateway.exchanges.Exchange` objects, and every check that makes a
request safe to forward.

What llhttp (httptools' parser) already refuses, answered with 400 and a closed
connection: Content-Length together with Transfer-Encoding, a duplicate or non-decimal
Content-Length, obsolete line folding, a bare LF or CR where CRLF is required, header
names that are not tokens (spaces, a space before the colon, control or non-ASCII bytes),
control characters in values, a transfer coding after ``chunked``, malformed chunks.

Checked here on top, because llhttp lets it through:

- a second Host header, a Host no host name could be, or none in HTTP/1.1 → 400
- a transfer coding other than plain ``chunked`` (``gzip, chunked``) → 501: forwarding it
  re-chunked would silently drop the other coding
- Transfer-Encoding in an HTTP/1.0 request → 400 (RFC 9112 §6.1: its framing is faulty)
- an HTTP version other than 1.0 and 1.1 → 505
- a fragment in the target, an absolute-form target that is not ``http(s)://authority``
  → 400; an absolute-form one is routed by its authority and forwarded in origin form
- an Upgrade request with a body → 400 (llhttp would read the body as the new protocol)
- an Expect other than ``100-continue`` → 417
- trailers of a chunked request are dropped (they could otherwise redefine framing)

Limits (:class:`~alwayson.gateway.exchanges.Limits`): request line and headers above
``max_header_bytes`` → 431 (414 when the target is most of it); a body above the
route's ``max_body_bytes`` → 413, from Content-Length before the body is read or while a
chunked body streams; a head not complete within ``header_timeout`` → 408 (checked by the
connection's timeout sweep).

A refused request is never forwarded: the parser is stopped by raising :class:`Refused`
inside the callback, reading stops for good, and the refusal is answered in turn (after
the responses to requests before it) with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic
from typing import NoReturn, cast

from httptools import HttpParserError, HttpRequestParser, parse_url

from alwayson.gateway.exchanges import (
    NO_EXTRAS,
    Exchange,
    ExchangeOwner,
    ProxyContext,
    RequestExtras,
)
from alwayson.gateway.headers import (
    CHUNKED_END,
    CONNECTION,
    CONTENT_LENGTH,
    EXPECT,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    HOST,
    HOST_NAMES,
    KEEP,
    KNOWN_HOSTS,
    PIN,
    REQUEST_HEADER_NAMES,
    REQUEST_ID,
    TRACK_HEADER,
    TRACKS,
    TRANSFER_ENCODING,
    UPGRADE,
    VIA,
    connection_tokens,
    drop_named,
    is_plain_chunked,
    is_valid_host,
)

# Why reading from a client is paused (bits; reading resumes when none is left).
UPLOADING = 1  # the backend connection's write buffer is full
BUFFERING = 2  # body bytes pile up while a backend connection opens
PIPELINING = 4  # a later request waits for the current one
REFUSED = 8  # a request was refused: nothing more is read from this connection
HOLDING = 16  # bytes after an upgrade request pile up until the backend answers it

CONTINUE = b"100-continue"
# ``b"#" in url`` first tries b"#" as an integer and formats (then clears) a TypeError:
# the byte's value is looked up directly instead.
_HASH = ord("#")
# Python 3.11 compiles ``imported.method(x)`` as an attribute load that it cannot
# specialize (a bound method is built on every call): the hot path calls bound methods.
_known_request_header = REQUEST_HEADER_NAMES.known.get
_known_host = KNOWN_HOSTS.get
# Each closes the x-request-id line the head has open at that point.
_FORWARDED_PROTO_AND_VIA = b"\r\nx-forwarded-proto: http\r\n" + VIA
_PROTO_VIA_AND_FORWARDED_HOST = _FORWARDED_PROTO_AND_VIA + b"x-forwarded-host: "
_VIA = b"\r\n" + VIA


def forwarded_for_line(client_ip: bytes) -> bytes:
    """The start of the headers added to a request without X-Forwarded-For (the same for
    every request of a connection)."""
    return b"x-forwarded-for: " + client_ip + b"\r\nx-request-id: "


class Refused(Exception):
    """Raised inside a parser callback to stop parsing; ``RequestReader.refusal`` says why."""


class RequestReader(asyncio.Protocol):
    """The parsing half of a client connection (:class:`~alwayson.gateway.proxying.
    ClientConnection` is the proxying half)."""

    __slots__ = (
        "active",
        "client_ip",
        "closed",
        "closing",
        "ctx",
        "current",
        "diverted",
        "forwarded_for_line",
        "head_bytes",
        "head_started",
        "held",
        "owner",
        "parser",
        "paused",
        "queue",
        "reading_head",
        "refusal",
        "touched",
        "transport",
        "upgrading",
    )

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        # What exchanges report to: the proxying half (a subclass) is the ExchangeOwner.
        self.owner = cast(ExchangeOwner, self)
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self.client_ip = b"unknown"
        self.forwarded_for_line = forwarded_for_line(self.client_ip)
        self.current: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being proxied
        self.queue: deque[Exchange] = deque()  # pipelined behind ``active``
        self.closing = ctx.draining  # no request after those already read is served
        self.closed = False
        self.paused = 0
        self.touched = ctx.clock.now
        self.reading_head = False
        self.head_bytes = 0
        self.head_started = 0.0
        self.refusal: tuple[int, str] | None = None
        self.upgrading = False  # an upgrade request was read: the rest is not HTTP
        self.diverted = False  # upgrading, or refused: data_received takes the slow path
        self.held: list[bytes] = []  # bytes after an upgrade request, for the tunnel

    # -- what the proxying half provides ---------------------------------------------------

    def _refuse_current(self, status: int, message: str) -> None:
        raise NotImplementedError

    # -- feeding the parser ----------------------------------------------------------------

    def upgrade_read(self, data: bytes, offset: int) -> None:
        """An upgrade request was read: the bytes after it are not HTTP."""
        self.upgrading = True
        self.diverted = True
        rest = data[offset:]
        if rest:
            self.hold(rest)

    def parse_failed(self, exc: HttpParserError) -> None:
        refusal = self.refusal
        if refusal is None:
            refusal = (400, f"malformed request: {exc}")
        self._refuse_current(*refusal)

    def count_head_bytes(self, size: int) -> None:
        """A packet ended inside a request head (the slow path: most heads come whole)."""
        if not self.head_bytes:
            self.head_started = self.ctx.clock.now  # the header timeout runs from here
        size += self.head_bytes
        self.head_bytes = size
        if size > self.ctx.limits.max_header_bytes:
            current = self.current
            if current is not None and len(current.url) * 2 > size:
                self._refuse_current(414, "request target too long")
            else:
                self._refuse_current(431, "request header fields too large")

    def hold(self, data: bytes) -> None:
        """Keep bytes that follow an upgrade request until the backend accepts it."""
        self.held.append(data)
        if sum(len(part) for part in self.held) > 64 * 1024:
            self.pause(HOLDING)

    def set_client_ip(self, client_ip: bytes) -> None:
        self.client_ip = client_ip
        self.forwarded_for_line = forwarded_for_line(client_ip)

    def _stop(self, status: int, message: str) -> NoReturn:
        self.refusal = (status, message)
        raise Refused(message)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first callback of every request (on_message_begin is not used: one Python
        # call less per request). A packet ending before the target arrives leaves the
        # connection idle-looking: the idle timeout, not the header timeout, then applies.
        exchange = self.current
        if exchange is None:
            exchange = Exchange(self.owner, self.transport, monotonic(), url)
            self.current = exchange
            self.reading_head = True
            self.head_bytes = 0
        else:
            exchange.url += url  # its length is bounded by count_head_bytes

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        if not self.reading_head:
            return  # a trailer of a chunked body: dropped (it could redefine framing)
        action = _known_request_header(name)
        if action is None:
            action = REQUEST_HEADER_NAMES.classify(name)
        if action == KEEP:
            exchange.head_parts += (name, b": ", value, b"\r\n")
        elif action == HOST:
            if exchange.host is not None:
                self._stop(400, "more than one Host header")
            routing_host = _known_host(value) or HOST_NAMES.lookup(value)
            if routing_host is None:
                self._stop(400, "invalid Host header")
            exchange.host = value
            exchange.routing_host = routing_host
            exchange.head_parts += (name, b": ", value, b"\r\n")
        else:
            extras = exchange.extras
            if extras is None:
                extras = exchange.extras = RequestExtras()
            if action == CONTENT_LENGTH:
                extras.content_length = value.strip()
            elif action == TRANSFER_ENCODING:
                if not is_plain_chunked(value):
                    self._stop(501, "transfer codings other than chunked are not supported")
                extras.chunked = True
            elif action == FORWARDED_FOR:
                previous = extras.forwarded_for
                extras.forwarded_for = value if previous is None else previous + b", " + value
            elif action == REQUEST_ID:
                if value:
                    exchange.request_id = value
            elif action == EXPECT:
                extras.expect = value.strip().lower()
            elif action == CONNECTION:
                tokens = connection_tokens(value)
                if tokens:
                    extra = extras.extra_drop
                    extras.extra_drop = tokens if extra is None else extra | tokens
            elif action == UPGRADE:
                extras.upgrade = value
            elif action == FORWARDED_PROTO:
                extras.forwarded_proto = True
                exchange.head_parts += (name, b": ", value, b"\r\n")
            elif action == FORWARDED_HOST:
                extras.forwarded_host = True
                exchange.head_parts += (name, b": ", value, b"\r\n")
            elif action == PIN:
                self._pin(extras, name.lower(), value)
                exchange.head_parts += (name, b": ", value, b"\r\n")
            # Anything else is a hop-by-hop header: it stays on this hop.

    def _pin(self, extras: RequestExtras, lower_name: bytes, value: bytes) -> None:
        """X-Alwayson-Track or X-Alwayson-Preview (rules: :mod:`alwayson.gateway.balancing`)."""
        if lower_name == TRACK_HEADER:
            track = TRACKS.get(value.strip().lower())
            if track is not None:
                extras.track = track  # set after a Preview header too: Track wins
        elif extras.track is None and value.strip() == b"1":  # Preview
            extras.track = "candidate"

    def on_headers_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        self.reading_head = False
        ctx = self.ctx
        parser = self.parser
        method = parser.get_method()
        exchange.method = method
        exchange.is_head = method == b"HEAD"
        keep_alive = exchange.keep_alive = parser.should_keep_alive()
        # None when the request had only Host and end-to-end headers: every check of the
        # extras is then skipped (a Connection or Proxy-Connection header makes extras).
        extras = exchange.extras
        # llhttp reads HTTP/0.9, 1.0, 1.1 and 2.0 only, and keeps a connection alive without
        # a Connection header for HTTP/1.1 only: such a request needs no call to the costly
        # get_http_version.
        version = "1.1" if keep_alive and extras is None else parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                self._stop(505, f"HTTP version {version} is not supported")
            exchange.http10 = True
            if extras is not None and extras.chunked:  # other codings were refused already
                self._stop(400, "Transfer-Encoding in an HTTP/1.0 request")
        elif exchange.host is None:
            self._stop(400, "an HTTP/1.1 request needs a Host header")
        if self.closing:
            exchange.close_after = True
        if exchange.request_id is None:
            exchange.request_id = ctx.request_ids.next()
        if method == b"CONNECT":
            self._stop(501, "CONNECT is not supported")
        url = exchange.url
        if url[:1] != b"/":
            self._absolute_form(exchange)
            url = exchange.url
        elif _HASH in url:
            self._stop(400, "a request target cannot hold a fragment")
        if extras is not None and extras.upgrade is not None:
            if parser.should_upgrade():
                if extras.chunked or extras.content_length not in (None, b"0"):
                    self._stop(400, "an Upgrade request cannot carry a body")
                exchange.close_after = True  # if the backend declines, the rest is not HTTP
            else:
                extras.upgrade = None  # no "Connection: upgrade": a plain request
        # In line (not self.place()): this runs for every request.
        if self.active is None:
            self.active = exchange
        else:
            self.queue.append(exchange)
            self.pause(PIPELINING)
        if extras is not None and extras.expect is not None and extras.expect != CONTINUE:
            exchange.local_status = 417
            exchange.local_message = "only Expect: 100-continue is supported"
            return
        matcher = ctx.matcher
        route = matcher.match(exchange.routing_host, url)
        if route is None:
            if matcher.size:
                exchange.local_status = 404
                exchange.local_message = "no route for this host and path"
            else:
                exchange.local_status = 503
                exchange.local_message = "this gateway has no route table yet"
            return
        exchange.route = route
        host = exchange.host
        if extras is None and host:
            # The common request, in few pieces (joining ten or fewer saves an allocation).
            parts = exchange.head_parts
            parts += (
                self.forwarded_for_line,
                exchange.request_id,
                _PROTO_VIA_AND_FORWARDED_HOST,
                host,
                b"\r\n\r\n",
            )
            exchange.head = b"%s %s HTTP/1.1\r\n%s" % (method, url, b"".join(parts))
            return
        if extras is None:
            extras = NO_EXTRAS
        elif extras.track is not None:
            exchange.route = route.pinned.get(extras.track, route)
        length = extras.content_length
        if length is not None and int(length) > route.max_body:
            exchange.local_status = 413
            exchange.local_message = f"request body larger than {route.max_body} bytes"
            return
        # The head the backend gets: the client's end-to-end headers, then ours.
        parts = exchange.head_parts
        if extras.extra_drop:
            parts = drop_named(parts, extras.extra_drop)
        previous = extras.forwarded_for
        if previous is None:
            parts += (self.forwarded_for_line, exchange.request_id)
        else:
            parts += (
                b"x-forwarded-for: ",
                previous,
                b", ",
                self.client_ip,
                b"\r\nx-request-id: ",
                exchange.request_id,
            )
        parts.append(_VIA if extras.forwarded_proto else _FORWARDED_PROTO_AND_VIA)
        if host is None:
            # HTTP/1.0 without Host; HTTP/1.1 requires one: empty, as RFC 9112 §3.2 says
            # for a target without an authority.
            parts.append(b"host: \r\n")
        elif host and not extras.forwarded_host:
            parts += (b"x-forwarded-host: ", host, b"\r\n")
        if extras.upgrade is not None:
            parts += (b"connection: upgrade\r\nupgrade: ", extras.upgrade, b"\r\n\r\n")
        elif extras.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif length is not None:
            parts += (b"content-length: ", length, b"\r\n\r\n")
        else:
            parts.append(b"\r\n")
        exchange.head = b"%s %s HTTP/1.1\r\n%s" % (method, url, b"".join(parts))

    def _absolute_form(self, exchange: Exchange) -> None:
        """``GET http://host/path``: route by its authority and forward ``/path`` with it as
        Host (RFC 9112 §3.2.2), so the backend cannot see another host than the route did."""
        url = exchange.url
        if url == b"*":
            return  # OPTIONS *
        try:
            parsed = parse_url(url)
        except Exception:  # httptools raises its own HttpParserInvalidURLError
            self._stop(400, "invalid request target")
        schema = (parsed.schema or b"").lower()
        if schema not in (b"http", b"https") or not parsed.host or parsed.fragment:
            self._stop(400, "invalid request target")
        authority = parsed.host if parsed.port is None else b"%s:%d" % (parsed.host, parsed.port)
        if not is_valid_host(authority):
            self._stop(400, "invalid request target")
        exchange.url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        exchange.head_parts = drop_named(exchange.head_parts, {b"host"})
        exchange.head_parts += (b"host: ", authority, b"\r\n")
        exchange.host = authority
        exchange.routing_host = HOST_NAMES.lookup(authority) or b""

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        size = exchange.body_size + len(body)
        exchange.body_size = size
        if exchange.local_status:
            return  # answered by the gateway: the body goes nowhere
        route = exchange.route
        if route is not None and size > route.max_body:
            self._stop(413, f"request body larger than {route.max_body} bytes")
        extras = exchange.extras
        if extras is not None and extras.chunked:
            exchange.unsent += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            exchange.unsent.append(body)
        exchange.unsent_size += len(body)

    def on_message_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        self.current = None
        self.reading_head = False
        extras = exchange.extras
        if extras is not None and extras.chunked and not exchange.local_status:
            exchange.unsent.append(CHUNKED_END)
        exchange.body_done = True

    # -- helpers shared with the proxying half ---------------------------------------------

    def place(self, exchange: Exchange) -> None:
        """Make ``exchange`` the active one, or queue it behind the active one."""
        if self.active is None:
            self.active = exchange
        else:
            self.queue.append(exchange)
            self.pause(PIPELINING)

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()
