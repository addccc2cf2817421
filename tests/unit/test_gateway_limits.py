"""Limits a client cannot push past: header size (431/414), body size per route (413),
header-read timeout (408), idle timeout, maximum connections; upstream timeout (504) and
no backend (503). Every error is JSON with the request id, and logged with it."""

from __future__ import annotations

import logging

import pytest

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

SMALL = Limits(
    max_header_bytes=1024,
    max_body_bytes=100,
    header_timeout=10,
    idle_timeout=60,
    upstream_timeout=30,
    max_connections=2,
)


def test_headers_beyond_the_limit_are_431_and_nothing_is_forwarded() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    _, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for _ in range(30):  # a little at a time, as a slow attacker would
        if downstream.closed:
            break
        client.data_received(b"X-Padding: " + b"p" * 50 + b"\r\n")
    status, document = error_of(downstream.take())
    assert status == 431 and document["request_id"]
    assert downstream.closed and upstream.take() == b""


def test_headers_just_under_the_limit_pass() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 900 + b"\r\n\r\n")
    assert upstream.take().startswith(b"GET / ")


def test_a_target_beyond_the_limit_is_414() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    client, downstream = h.client()
    client.data_received(b"GET /" + b"a" * 2000)
    status, _ = error_of(downstream.take())
    assert status == 414 and downstream.closed


def test_declared_body_over_the_gateway_default_is_413_before_reading_it() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    _, upstream = h.idle(A)
    client, downstream = h.client()
    # compile_table in the harness uses the 10 MiB default: the route decides here
    h.install(table(backend("a", A), max_body_bytes=100))
    client.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n"
    )
    raw = downstream.take()
    assert b"100 Continue" not in raw
    status, document = error_of(raw)
    assert status == 413 and "100 bytes" in document["error"]
    assert downstream.closed and upstream.take() == b""


def test_route_limit_lets_a_body_of_exactly_the_limit_through() -> None:
    h = Harness(table(backend("a", A), max_body_bytes=5))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert split(upstream.take())[2] == b"hello"
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"


def test_routes_without_a_limit_get_the_gateway_default() -> None:
    h = Harness(table(backend("a", A)))
    (plan,) = h.plans
    assert plan.max_body == 10 * 1024 * 1024


def test_chunked_body_growing_past_the_limit_is_413_and_the_backend_is_cut() -> None:
    h = Harness(table(backend("a", A), max_body_bytes=10))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.data_received(b"8\r\n12345678\r\n")
    assert split(upstream.take())[2] == b"8\r\n12345678\r\n"  # streamed as it came
    client.data_received(b"8\r\n12345678\r\n")
    status, _ = error_of(downstream.take())
    assert status == 413 and downstream.closed
    assert upstream.aborted and conn.exchange is None and h.pools[A].outstanding == 0


def test_slow_request_head_is_408_and_closed() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    _, upstream = h.idle(A)
    slow, slow_down = h.client()
    idle, idle_down = h.client()
    slow.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
    for second in range(1, 10):
        slow.data_received(b"a")  # trickling bytes does not buy time
        slow.check_timeouts(h.clock.now + second)
    assert slow_down.take() == b""
    for client in (slow, idle):
        client.check_timeouts(h.clock.now + 10.5)
    status, _ = error_of(slow_down.take())
    assert status == 408 and slow_down.closed
    assert not idle_down.closed and idle_down.take() == b""  # idle is not slow: no 408
    assert upstream.take() == b""


def test_idle_keep_alive_connection_is_closed_silently_after_the_idle_timeout() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(OK_RESPONSE)
    downstream.take()
    client.check_timeouts(h.clock.now + 59)
    assert not downstream.closed
    client.check_timeouts(h.clock.now + 61)
    assert downstream.closed and downstream.take() == b""


def test_connections_beyond_the_maximum_are_closed_at_once_and_counted() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    first, first_down = h.client()
    _, second_down = h.client()
    third, third_down = h.client()
    assert third_down.aborted and third not in h.ctx.clients
    assert not first_down.closed and not second_down.closed
    assert h.metrics.rejected_connections == 1
    third.connection_lost(None)  # the transport reports the abort: nothing breaks
    first.connection_lost(None)
    _, fourth_down = h.client()
    assert not fourth_down.closed
    assert "alwayson_gateway_rejected_connections_total 1.0" in h.metrics.render().decode()


def test_upstream_silence_is_504_and_no_backend_is_503() -> None:
    h = Harness(table(backend("a", A)), limits=SMALL)
    h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.check_timeouts(h.clock.now + 31)
    status, document = error_of(downstream.take())
    assert status == 504 and document["request_id"] == "rid-1"
    empty = Harness(table())
    client, downstream = empty.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert error_of(downstream.take())[0] == 503


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-1\r\nX A: 1\r\n\r\n", 400),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-1\r\n\r\n", 404),
    ],
)
def test_errors_are_logged_with_the_request_id(
    raw: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(table(backend("a", A), path_prefix="/a"))
    client, downstream = h.client()
    with caplog.at_level(logging.INFO, logger="alwayson.gateway"):
        client.data_received(raw)
    got, document = error_of(downstream.take())
    assert got == status
    request_id = document["request_id"]
    assert any(
        request_id in record.getMessage() and str(status) in record.getMessage()
        for record in caplog.records
    )
