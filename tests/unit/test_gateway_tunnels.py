"""WebSocket (``Upgrade``) pass-through with in-memory transports: the upgrade request is
forwarded with its Upgrade header, a 101 turns both connections into a byte tunnel, a
refusal is an ordinary response that closes the connection."""

from __future__ import annotations

try:
    from test_gateway_harness import (
        OK_RESPONSE,
        A,
        Harness,
        backend,
        error_of,
        split,
        table,
    )
except ImportError:  # collected as part of a package
    from .test_gateway_harness import (
        OK_RESPONSE,
        A,
        Harness,
        backend,
        error_of,
        split,
        table,
    )

from alwayson.gateway.exchanges import Limits
from alwayson.gateway.tunnels import TunnelEnd

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def test_upgrade_request_is_forwarded_with_its_upgrade_headers() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(UPGRADE)
    raw = upstream.take()
    first, headers, _ = split(raw)
    assert first == "GET /chat HTTP/1.1"
    assert headers["connection"] == "upgrade" and headers["upgrade"] == "websocket"
    assert headers["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert raw.lower().count(b"connection:") == 1


def test_101_turns_both_connections_into_a_tunnel() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(UPGRADE + b"\x81\x05early")  # a frame sent before the answer
    upstream.take()
    conn.data_received(SWITCH + b"\x81\x02hi")  # the backend's first frame, same packet
    raw = downstream.take()
    first, headers, rest = split(raw)
    assert first == "HTTP/1.1 101 Switching Protocols"
    assert headers["upgrade"] == "websocket" and headers["connection"] == "upgrade"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert rest == b"\x81\x02hi"
    assert upstream.take() == b"\x81\x05early"
    client_end, backend_end = downstream.protocol, upstream.protocol
    assert isinstance(client_end, TunnelEnd) and isinstance(backend_end, TunnelEnd)
    assert client not in h.ctx.clients and len(h.ctx.tunnels) == 1
    assert h.pools[A].idle == [] and h.pools[A].outstanding == 0
    client_end.data_received(b"ping")
    backend_end.data_received(b"pong")
    assert upstream.take() == b"ping" and downstream.take() == b"pong"
    # flow control: a full client buffer pauses the backend, and back
    client_end.pause_writing()
    assert not upstream.reading
    client_end.resume_writing()
    assert upstream.reading
    # either side closing closes both
    backend_end.connection_lost(None)
    assert downstream.closed and upstream.closed and not h.ctx.tunnels
    assert h.metrics.stats_for("accounts", "1.0", "jakarta").by_class[1] == 1


def test_a_client_half_close_ends_the_tunnel() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(UPGRADE)
    conn.data_received(SWITCH)
    assert downstream.protocol.eof_received() is False
    assert downstream.closed and upstream.closed


def test_an_idle_tunnel_is_closed_after_its_timeout() -> None:
    h = Harness(table(backend("a", A)), limits=Limits(tunnel_idle_timeout=300))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(UPGRADE)
    conn.data_received(SWITCH)
    (tunnel,) = h.ctx.tunnels
    tunnel.check_timeout(h.clock.now + 299)
    assert not downstream.closed
    tunnel.check_timeout(h.clock.now + 301)
    assert downstream.closed and upstream.closed


def test_a_declined_upgrade_is_relayed_and_the_connection_closed() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(UPGRADE + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
    first, headers, _ = split(downstream.take())
    assert first == "HTTP/1.1 426 Upgrade Required" and headers["connection"] == "close"
    assert downstream.closed


def test_101_to_a_request_that_did_not_ask_is_a_502() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(SWITCH)
    status, _ = error_of(downstream.take())
    assert status == 502 and upstream.aborted


def test_upgrade_header_without_connection_upgrade_is_a_plain_request() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    assert b"upgrade" not in upstream.take().lower()
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK" and not downstream.closed
