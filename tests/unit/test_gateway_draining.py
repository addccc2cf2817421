"""Draining without dropping a request, driven with in-memory transports: the request in
flight is answered with ``Connection: close``, a keep-alive connection gets its close on
its next response, idle connections get a short grace, and a table that removes a backend
retires its pooled connections at once."""

from __future__ import annotations

try:
    from test_gateway_harness import (
        OK_RESPONSE,
        A,
        B,
        Harness,
        backend,
        split,
        table,
    )
except ImportError:  # collected as part of a package
    from .test_gateway_harness import (
        OK_RESPONSE,
        A,
        B,
        Harness,
        backend,
        split,
        table,
    )

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


def test_request_in_flight_is_answered_with_close_then_the_connection_closes() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(POST)
    client.start_draining()
    assert not downstream.closed
    conn.data_received(OK_RESPONSE)
    first, headers, body = split(downstream.take())
    assert (first, body) == ("HTTP/1.1 200 OK", b"hello")
    assert headers["connection"] == "close"
    assert downstream.closed
    assert h.pools[A].idle == [conn]  # the backend connection itself is fine


def test_response_already_promising_keep_alive_closes_on_the_next_request() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(GET)
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")  # head is out
    client.start_draining()
    conn.data_received(b"llo")
    _, headers, _ = split(downstream.take())
    assert "connection" not in headers
    assert not downstream.closed  # the client was promised this connection: not cut
    client.data_received(POST)  # the client keeps sending, as it may
    conn.data_received(OK_RESPONSE)
    _, headers, body = split(downstream.take())
    assert headers["connection"] == "close" and body == b"hello"
    assert downstream.closed


def test_idle_connection_gets_a_grace_and_a_request_in_it_is_answered() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    quiet, quiet_down = h.client()
    busy, busy_down = h.client()
    h.clock.now += 30  # both idle for a while before the drain
    for client in (quiet, busy):
        client.start_draining()
    for client in (quiet, busy):
        client.check_timeouts(h.clock.now + 0.5)
    assert not quiet_down.closed and not busy_down.closed
    busy.data_received(GET)
    conn.data_received(OK_RESPONSE)
    assert split(busy_down.take())[1]["connection"] == "close"
    assert busy_down.closed
    quiet.check_timeouts(h.clock.now + 1.1)
    assert quiet_down.closed and quiet_down.take() == b""


def test_request_head_half_read_when_the_drain_starts_is_answered() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /slowly HTTP/1.1\r\nHo")
    client.start_draining()
    client.check_timeouts(h.clock.now + 2)  # past the grace, but a request is coming in
    assert not downstream.closed
    client.data_received(b"st: x\r\n\r\n")
    assert upstream.take().startswith(b"GET /slowly")
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[1]["connection"] == "close"
    assert downstream.closed


def test_pipelined_requests_are_all_answered_and_only_the_last_says_close() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(GET + b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    client.start_draining()
    conn.data_received(OK_RESPONSE)
    first = downstream.take()
    assert b"connection: close" not in first and not downstream.closed
    assert upstream.take().count(b"GET ") == 2
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[1]["connection"] == "close"
    assert downstream.closed


def test_connections_accepted_while_draining_close_after_their_first_request() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    h.ctx.draining = True
    client, downstream = h.client()
    client.data_received(GET)
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[1]["connection"] == "close"


def test_last_connection_gone_reports_drained() -> None:
    h = Harness(table(backend("a", A)))
    drained: list[bool] = []
    first, _ = h.client()
    second, _ = h.client()
    h.ctx.draining = True
    h.ctx.on_drained = lambda: drained.append(True)
    first.connection_lost(None)
    assert drained == []
    second.connection_lost(None)
    assert drained == [True]


def test_removed_backend_loses_its_idle_connections_and_is_never_used_again() -> None:
    h = Harness(table(backend("a", A), backend("b", B)))
    conn_a, upstream_a = h.idle(A)
    conn_b, upstream_b = h.idle(B)
    pool_a = h.pools[A]
    client, downstream = h.client()
    # a pipelined POST read under the old table, then the table drops A
    h.pools[B].ejected_until = h.clock.now + 5  # the first request goes to A
    client.data_received(GET + POST)
    assert upstream_a.take().startswith(b"GET /")
    h.pools[B].ejected_until = 0
    h.install(table(backend("b", B)))
    pool_a.retire()  # what Gateway.install does for an address no route uses any more
    conn_a.data_received(OK_RESPONSE)  # the GET in flight on A still finishes
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert upstream_a.closed and pool_a.idle == []  # never pooled again
    assert upstream_b.take().startswith(b"POST /pay")  # matched again: B
    conn_b.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert pool_a.take_idle() is None


def test_retire_closes_idle_connections_at_once() -> None:
    h = Harness(table(backend("a", A)))
    _, first = h.idle(A)
    _, second = h.idle(A)
    h.pools[A].retire()
    assert first.closed and second.closed and h.pools[A].idle == []
