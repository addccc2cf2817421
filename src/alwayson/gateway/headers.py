"""HTTP/1.1 header rules of a proxy: hop-by-hop removal, forwarding headers, request ids,
framing and the few canned responses the gateway writes itself.

A header name is classified by one dict lookup on the name as sent (:class:`HeaderNames`
remembers the lower-cased classification of each name); everything the hot path needs is
precomputed bytes.
"""

from __future__ import annotations

import itertools
import json
import os
from http import HTTPStatus

# What the request side does with a header (codes of REQUEST_HEADER_ACTIONS).
KEEP = 0
DROP = 1
HOST = 2
CONNECTION = 3
CONTENT_LENGTH = 4
TRANSFER_ENCODING = 5
FORWARDED_FOR = 6
REQUEST_ID = 7
EXPECT = 8
UPGRADE = 9
FORWARDED_PROTO = 10
FORWARDED_HOST = 11
PIN = 12  # X-Alwayson-Track or X-Alwayson-Preview: see alwayson.gateway.balancing

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
    }
)

REQUEST_HEADER_ACTIONS: dict[bytes, int] = {name: DROP for name in HOP_BY_HOP}
REQUEST_HEADER_ACTIONS.update(
    {
        b"host": HOST,
        b"connection": CONNECTION,
        b"content-length": CONTENT_LENGTH,
        b"transfer-encoding": TRANSFER_ENCODING,
        b"x-forwarded-for": FORWARDED_FOR,
        b"x-request-id": REQUEST_ID,
        b"expect": EXPECT,
        b"upgrade": UPGRADE,
        b"x-forwarded-proto": FORWARDED_PROTO,
        b"x-forwarded-host": FORWARDED_HOST,
        b"x-alwayson-track": PIN,
        b"x-alwayson-preview": PIN,
    }
)

TRACK_HEADER = b"x-alwayson-track"
# The values of X-Alwayson-Track, lower-cased and stripped, to the track they pin.
TRACKS: dict[bytes, str] = {b"stable": "stable", b"candidate": "candidate"}

# The response side keeps Content-Length (a body with a length is relayed as is).
RESPONSE_HEADER_ACTIONS: dict[bytes, int] = {name: DROP for name in HOP_BY_HOP}
RESPONSE_HEADER_ACTIONS.update(
    {
        b"connection": CONNECTION,
        b"content-length": CONTENT_LENGTH,
        b"transfer-encoding": TRANSFER_ENCODING,
        b"x-request-id": REQUEST_ID,
        b"upgrade": UPGRADE,
    }
)


class HeaderNames:
    """Header name as sent → its action (``KEEP``: forwarded as is, ``DROP``: a hop-by-hop or
    ``Proxy-*`` header, or one of the codes above), from the lower-cased name.

    Peers send the same few names over and over, in their own casing: each is classified
    once and remembered (up to ``size`` of them; beyond that they are classified every
    time, so random names cost CPU, never memory). The hot path looks names up in
    ``known`` and calls :meth:`classify` only on a miss."""

    __slots__ = ("_by_lower", "_size", "known")

    def __init__(self, by_lower_name: dict[bytes, int], size: int = 4096) -> None:
        self._by_lower = by_lower_name
        self._size = size
        self.known: dict[bytes, int] = {}

    def classify(self, raw: bytes) -> int:
        lower = raw.lower()
        action = self._by_lower.get(lower)
        if action is None:
            action = DROP if is_dropped_by_prefix(lower) else KEEP
        if len(self.known) < self._size:
            self.known[raw] = action
        return action


REQUEST_HEADER_NAMES = HeaderNames(REQUEST_HEADER_ACTIONS)
RESPONSE_HEADER_NAMES = HeaderNames(RESPONSE_HEADER_ACTIONS)

VIA = b"via: 1.1 alwayson\r\n"
VIA_AND_REQUEST_ID = VIA + b"x-request-id: "

# Characters a Host header may hold: reg-name, IPv4, [IPv6] and a port (RFC 3986 §3.2.2).
HOST_CHARACTERS = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%"
)


def is_valid_host(value: bytes) -> bool:
    """Whether a Host header value could name a host (empty is allowed by RFC 9112 §3.2)."""
    return not value.translate(None, HOST_CHARACTERS)


class HostNames:
    """Host header value → its routing form (lower case, no port), or None when invalid.

    A gateway sees the same few Host values over and over: they are checked once and
    remembered (up to ``size`` of them; beyond that they are checked every time, so a
    client sending random hosts costs CPU, never memory)."""

    __slots__ = ("_known", "_size")

    def __init__(self, size: int = 4096) -> None:
        self._known: dict[bytes, bytes | None] = {}
        self._size = size

    def lookup(self, raw: bytes) -> bytes | None:
        known = self._known
        if raw in known:
            return known[raw]
        routing = _routing_host(raw) if is_valid_host(raw) else None
        if len(known) < self._size:
            known[raw] = routing
        return routing


def _routing_host(raw: bytes) -> bytes:
    if raw.startswith(b"["):
        end = raw.find(b"]")
        return raw[: end + 1].lower() if end > 0 else raw.lower()
    colon = raw.find(b":")
    if colon >= 0:
        raw = raw[:colon]
    return raw.lower()


HOST_NAMES = HostNames()
# Its memory, for a dict lookup on the hot path (an empty Host maps to b"", which is
# falsy: callers fall back to ``HOST_NAMES.lookup``, which answers it as well).
KNOWN_HOSTS = HOST_NAMES._known


# Tokens of a Connection header that name no other header.
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"


def is_dropped_by_prefix(lower_name: bytes) -> bool:
    """``Proxy-*`` headers never cross a proxy."""
    return lower_name.startswith(b"proxy-")


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names listed by a Connection header (RFC 9110 §7.6.1), minus its options."""
    tokens = {token.strip().lower() for token in value.split(b",")}
    return {token for token in tokens if token and token not in CONNECTION_OPTIONS}


def drop_named(parts: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove headers by name from a flat ``[name, b": ", value, b"\\r\\n", ...]`` list."""
    kept: list[bytes] = []
    for index in range(0, len(parts), 4):
        if parts[index].lower() not in names:
            kept.extend(parts[index : index + 4])
    return kept


def is_plain_chunked(transfer_encoding: bytes) -> bool:
    """A request's only acceptable transfer coding: ``chunked`` alone. ``gzip, chunked``
    passes llhttp but forwarding it re-chunked would silently drop the gzip coding."""
    return transfer_encoding.strip().lower() == b"chunked"


def is_chunked(transfer_encoding: bytes) -> bool:
    """Chunked must be the last coding (RFC 9112 §6.1); anything else is not framed by it."""
    return transfer_encoding.rsplit(b",", 1)[-1].strip().lower() == b"chunked"


def forwarded_for(previous: bytes | None, client_ip: bytes) -> bytes:
    return previous + b", " + client_ip if previous else client_ip


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body, as three pieces to append to an output list."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


class RequestIds:
    """Short ids unique across processes and restarts: a random prefix and a counter."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        self._prefix = prefix if prefix is not None else os.urandom(5).hex().encode() + b"-"
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return b"%s%x" % (self._prefix, next(self._counter))


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}
# The status line relayed for a backend's response, for every three-digit code: with the
# standard reason phrase, not the backend's (RFC 9112 §4: clients ignore it; Envoy does
# the same), which saves reading it on every response.
RELAYED_STATUS_LINES: list[bytes] = [_status_line(code) for code in range(1000)]


def status_line(code: int) -> bytes:
    if 0 <= code < 1000:
        return RELAYED_STATUS_LINES[code]
    return b"HTTP/1.1 %d \r\n" % code


def error_response(
    status: int,
    message: str,
    request_id: bytes,
    *,
    close: bool,
    head_only: bool = False,
) -> bytes:
    """A complete JSON error response written by the gateway itself."""
    body = json.dumps({"error": message, "request_id": request_id.decode("latin-1")}).encode()
    head = [
        STATUS_LINES.get(status) or _status_line(status),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: ",
        request_id,
        b"\r\n",
    ]
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    if not head_only:
        head.append(body)
    return b"".join(head)


def status_class(code: int) -> str:
    """``2xx`` … ``5xx``, the ``code`` label of the request counter."""
    return f"{code // 100}xx"
