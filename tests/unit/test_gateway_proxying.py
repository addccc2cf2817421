"""The proxy's protocols driven by hand with in-memory transports: header rewriting,
framing, retries, timeouts, pipelining, local errors. No sockets, no event loop."""

from __future__ import annotations

import pytest

try:
    from test_gateway_harness import (
        OK_RESPONSE,
        A,
        B,
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
        B,
        Harness,
        backend,
        error_of,
        split,
        table,
    )

from alwayson.gateway.exchanges import Exchange
from alwayson.gateway.routes import RouteTable


def test_request_head_is_rewritten_for_the_backend() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(
        b"GET /accounts/1?x=2 HTTP/1.1\r\n"
        b"Host: bank.local:8080\r\n"
        b"Connection: keep-alive, X-Secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Secret: hop\r\n"
        b"Proxy-Authorization: Basic abc\r\n"
        b"Proxy-Whatever: 1\r\n"
        b"TE: trailers\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\n"
        b"X-Custom: kept\r\n\r\n"
    )
    first, headers, body = split(upstream.take())
    assert first == "GET /accounts/1?x=2 HTTP/1.1"
    assert headers["host"] == "bank.local:8080"
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "1.2.3.4, 10.9.8.7"
    assert headers["x-request-id"] == "rid-1"
    for gone in ("connection", "keep-alive", "x-secret", "proxy-authorization", "te"):
        assert gone not in headers
    assert "proxy-whatever" not in headers
    assert body == b""


def test_incoming_request_id_is_kept_and_forwarded_for_starts_with_the_client() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\n\r\n")
    _, headers, _ = split(upstream.take())
    assert headers["x-request-id"] == "abc-123"
    assert headers["x-forwarded-for"] == "10.9.8.7"


def test_response_is_relayed_and_both_connections_kept_alive() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream.take()
    conn.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nx-app: yes\r\n\r\nhello"
    )
    first, headers, body = split(downstream.take())
    assert first == "HTTP/1.1 200 OK"
    assert headers == {
        "content-length": "5",
        "x-app": "yes",
        "via": "1.1 alwayson",
        "x-request-id": "rid-1",
    }
    assert body == b"hello"
    assert not downstream.closed
    assert h.pools[A].idle == [conn]
    assert h.pools[A].outstanding == 0
    stats = h.metrics.stats_for("accounts", "1.0", "jakarta")
    assert stats.by_class[2] == 1


def test_two_requests_on_one_client_connection_reuse_the_pooled_connection() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    for _ in range(2):
        client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert upstream.take().startswith(b"GET / HTTP/1.1")
        conn.data_received(OK_RESPONSE)
        assert downstream.take().endswith(b"hello")
    assert h.pools[A].idle == [conn]


def test_content_length_body_is_streamed_as_it_comes() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
    _, headers, body = split(upstream.take())
    assert headers["content-length"] == "10"
    assert body == b"01234"
    client.data_received(b"56789")
    assert upstream.take() == b"56789"


def test_chunked_request_body_is_reframed() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    _, headers, body = split(upstream.take())
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def test_chunked_response_stays_chunked_for_http11_clients() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
    conn.data_received(b"0\r\n\r\n")
    _, headers, body = split(downstream.take())
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"4\r\nwiki\r\n0\r\n\r\n"
    assert h.pools[A].idle == [conn]


def test_http10_client_gets_a_close_delimited_body() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n"
    )
    _, headers, body = split(downstream.take())
    assert "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    assert body == b"wiki"
    assert downstream.closed


@pytest.mark.parametrize("connection", [b"Connection: keep-alive", b"Proxy-Connection: keep-alive"])
def test_http10_keep_alive_client_is_still_answered_as_http10(connection: bytes) -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    for _ in range(2):
        client.data_received(b"GET / HTTP/1.0\r\nHost: x\r\n" + connection + b"\r\n\r\n")
        assert upstream.take().startswith(b"GET / HTTP/1.1\r\n")
        conn.data_received(OK_RESPONSE)
        first, headers, body = split(downstream.take())
        assert first == "HTTP/1.1 200 OK" and body == b"hello"
        assert headers["connection"] == "keep-alive"  # an HTTP/1.0 client is told so
        assert not downstream.closed
    # without a length, the body ends with the connection: an HTTP/1.0 client gets a close
    client.data_received(b"GET / HTTP/1.0\r\nHost: x\r\n" + connection + b"\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    _, headers, body = split(downstream.take())
    assert headers["connection"] == "close" and body == b"ok" and downstream.closed


def test_response_without_length_ends_with_the_backend_connection() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    conn.data_received(b"part two")
    conn.connection_lost(None)
    _, headers, body = split(downstream.take())
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"9\r\npart one \r\n8\r\npart two\r\n0\r\n\r\n"
    assert not downstream.closed


def test_head_response_finishes_at_its_headers() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
    _, headers, body = split(downstream.take())
    assert headers["content-length"] == "1234" and body == b""
    assert h.pools[A].idle == [conn]
    # the connection parses the next response from scratch
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(OK_RESPONSE)
    assert downstream.take().endswith(b"hello")


def test_interim_100_continue_from_the_backend_is_not_relayed() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_RESPONSE)
    first, _, body = split(downstream.take())
    assert first == "HTTP/1.1 200 OK" and body == b"hello"


def test_expect_100_continue_is_answered_by_the_gateway() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert downstream.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert "expect" not in split(upstream.take())[1]


def test_no_route_is_404_json_with_the_request_id() -> None:
    h = Harness(table(backend("a", A), path_prefix="/accounts"))
    client, downstream = h.client()
    client.data_received(b"GET /loans HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n")
    status, document = error_of(downstream.take())
    assert status == 404
    assert document == {"error": "no route for this host and path", "request_id": "r1"}
    assert not downstream.closed
    assert h.metrics.stats_for("", "", "").by_class[4] == 1


def test_route_without_backends_is_503() -> None:
    h = Harness(table())
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, document = error_of(downstream.take())
    assert status == 503
    assert "accounts" in document["error"]
    assert h.metrics.stats_for("accounts", "", "").by_class[5] == 1


def test_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    h = Harness(table(backend("a", A)))
    stale, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    stale.connection_lost(ConnectionResetError())
    (exchange,) = h.pools[A].pending
    fresh, upstream = h.fresh(A)
    client.connected(exchange, fresh)
    assert upstream.take().startswith(b"GET /x HTTP/1.1")
    fresh.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.metrics.retries == {"accounts": 1}


def test_post_is_not_replayed_after_it_may_have_reached_the_backend() -> None:
    h = Harness(table(backend("a", A), backend("b", B)))
    conn_a, _ = h.idle(A)
    h.idle(B)
    h.pools[B].ejected_until = h.clock.now + 5  # make sure the POST goes to A
    client, downstream = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert conn_a.exchange is not None
    conn_a.connection_lost(ConnectionResetError())
    status, document = error_of(downstream.take())
    assert status == 502
    assert "a" in document["error"]
    assert h.metrics.retries == {}


def test_get_reset_before_response_is_retried_once_on_another_backend() -> None:
    h = Harness(table(backend("a", A), backend("b", B)))
    conn_a, _ = h.fresh(A)  # a fresh connection: not a stale-pool case
    conn_b, upstream_b = h.idle(B)
    client, downstream = h.client()
    h.pools[B].ejected_until = h.clock.now + 5  # first choice: A, with no idle connection
    client.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    (exchange,) = h.pools[A].pending
    client.connected(exchange, conn_a)
    h.pools[B].ejected_until = 0
    conn_a.connection_lost(ConnectionResetError())
    assert upstream_b.take().startswith(b"GET /x")
    conn_b.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"


def test_connect_failure_ejects_and_retries_elsewhere() -> None:
    h = Harness(table(backend("a", A), backend("b", B)))
    conn_b, upstream_b = h.idle(B)
    h.pools[B].ejected_until = h.clock.now + 5
    client, downstream = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    (exchange,) = h.pools[A].pending
    h.pools[B].ejected_until = 0
    client.connected(exchange, None)
    assert h.pools[A].ejected_until == h.clock.now + h.ctx.outliers.base_seconds
    assert h.metrics.connect_errors == {("accounts", "a"): 1}
    _, _, body = split(upstream_b.take())
    assert body == b"hi"
    conn_b.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.pools[A].outstanding == h.pools[B].outstanding == 0


def test_connect_failure_of_the_only_backend_twice_is_503() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connected(h.pools[A].pending.pop(), None)
    client.connected(h.pools[A].pending.pop(), None)
    status, document = error_of(downstream.take())
    assert status == 503 and "connect failed" in document["error"]


def test_failure_after_the_response_started_cuts_the_client_connection() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly some")
    conn.connection_lost(ConnectionResetError())
    assert downstream.aborted


def test_upstream_timeout_is_504_and_the_connection_dropped() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    client.check_timeouts(h.clock.now + 5)
    assert downstream.take() == b""
    client.check_timeouts(h.clock.now + 31)
    status, _ = error_of(downstream.take())
    assert status == 504
    assert upstream.aborted and conn.exchange is None
    assert h.pools[A].idle == [] and h.pools[A].outstanding == 0


def test_idle_client_connection_is_closed_after_the_idle_timeout() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.check_timeouts(h.clock.now + 61)
    assert downstream.closed


def test_pipelined_requests_are_answered_in_order() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not downstream.reading  # the second one waits
    assert upstream.take().startswith(b"GET /1 ")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1")
    assert upstream.take().startswith(b"GET /2 ")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2")
    assert downstream.take().count(b"HTTP/1.1 200 OK") == 2
    assert downstream.reading


def test_client_going_away_drops_the_backend_connection() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connection_lost(None)
    assert upstream.aborted and h.pools[A].outstanding == 0
    assert client not in h.ctx.clients


def test_malformed_request_is_400_and_closed() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.data_received(b"NONSENSE\r\n\r\n")
    status, _ = error_of(downstream.take())
    assert status == 400 and downstream.closed


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_keep_the_connection(status: int) -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 %d Nothing\r\netag: 1\r\n\r\n" % status)
    first, headers, body = split(downstream.take())
    assert first.startswith(f"HTTP/1.1 {status} ") and body == b""
    assert "transfer-encoding" not in headers
    assert h.pools[A].idle == [conn]


def test_backend_connection_close_is_not_pooled() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    _, headers, _ = split(downstream.take())
    assert "connection" not in headers  # the client's connection stays open
    assert upstream.closed and h.pools[A].idle == []


def test_gateway_without_any_route_answers_503() -> None:
    h = Harness(RouteTable(generation=0, site="jakarta", routes=[]))
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, document = error_of(downstream.take())
    assert status == 503 and document["error"] == "this gateway has no route table yet"


def test_early_response_before_the_whole_body_is_not_pooled() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    conn.data_received(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert split(downstream.take())[0] == "HTTP/1.1 413 Request Entity Too Large"
    assert upstream.closed and h.pools[A].idle == []
    assert downstream.closed  # the rest of the body cannot be told from a next request


def test_client_half_close_after_its_request_still_gets_the_response() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.eof_received() is True  # keep the transport open for the answer
    conn.data_received(OK_RESPONSE)
    assert downstream.take().endswith(b"hello") and downstream.closed
    idle_client, _ = h.client()
    assert idle_client.eof_received() is False


def test_rest_of_a_long_body_is_relayed_as_it_comes_and_the_connection_reused() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n012")
    conn.data_received(b"3456")
    assert conn.body_left == 3
    conn.data_received(b"789")
    _, headers, body = split(downstream.take())
    assert headers["content-length"] == "10" and body == b"0123456789"
    assert h.pools[A].idle == [conn]
    # the next response is read by a fresh parser
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[2] == b"hello"


def test_bytes_after_a_long_body_are_not_relayed_and_the_connection_is_dropped() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nabc")
    conn.data_received(b"defHTTP/1.1 200 OK\r\n")  # a second response nobody asked for
    assert split(downstream.take())[2] == b"abcdef"
    assert upstream.closed and h.pools[A].idle == []
    assert not downstream.closed


# -- pinning to a release track ------------------------------------------------------------


def blue_green() -> Harness:
    """Stable ``a`` on A, and a candidate ``c`` on B at weight 0 (a blue-green preview)."""
    return Harness(table(backend("a", A), backend("c", B, weight=0, track="candidate")))


@pytest.mark.parametrize(
    "pin",
    [
        b"X-Alwayson-Track: candidate",
        b"x-alwayson-track: CANDIDATE ",
        b"X-Alwayson-Preview: 1",
        b"X-ALWAYSON-PREVIEW: 1",
        b"X-Alwayson-Preview: 1\r\nX-Alwayson-Track: nonsense",
        b"X-Alwayson-Track: candidate\r\nX-Alwayson-Preview: 0",
    ],
)
def test_pinned_request_reaches_the_weight_zero_candidate(pin: bytes) -> None:
    h = blue_green()
    h.idle(A)
    conn_b, upstream_b = h.idle(B)
    client, downstream = h.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n" + pin + b"\r\n\r\n")
    raw = upstream_b.take()
    assert raw.startswith(b"GET /x HTTP/1.1")
    for line in pin.split(b"\r\n"):
        assert line + b"\r\n" in raw  # forwarded unchanged
    conn_b.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.metrics.stats_for("accounts", "2.0", "jakarta").by_class[2] == 1


@pytest.mark.parametrize(
    "headers",
    [
        b"",
        b"X-Alwayson-Preview: 0\r\n",
        b"X-Alwayson-Preview: yes\r\n",
        b"X-Alwayson-Track: canary\r\n",
        b"X-Alwayson-Track: stable\r\n",
        b"X-Alwayson-Preview: 1\r\nX-Alwayson-Track: stable\r\n",  # Track wins
    ],
)
def test_request_without_a_candidate_pin_never_reaches_the_weight_zero_candidate(
    headers: bytes,
) -> None:
    h = blue_green()
    conn_a, upstream_a = h.idle(A)
    _, upstream_b = h.idle(B)
    client, downstream = h.client()
    for _ in range(20):
        client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert upstream_a.take().startswith(b"GET / ")
        conn_a.data_received(OK_RESPONSE)
        assert downstream.take().endswith(b"hello")
    assert upstream_b.take() == b""


def test_pin_to_a_track_the_route_lacks_is_routed_as_unpinned() -> None:
    h = Harness(table(backend("a", A), backend("b", B, weight=0)))
    conn_a, upstream_a = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Alwayson-Track: candidate\r\n\r\n")
    assert upstream_a.take().startswith(b"GET / ")
    conn_a.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"


def test_pinned_request_whose_candidate_cannot_be_reached_falls_back_to_stable() -> None:
    h = blue_green()
    conn_a, upstream_a = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Alwayson-Preview: 1\r\n\r\n")
    (exchange,) = h.pools[B].pending  # the candidate had no idle connection
    client.connected(exchange, None)
    assert upstream_a.take().startswith(b"GET / ")
    conn_a.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.pools[A].outstanding == h.pools[B].outstanding == 0


def test_pinned_request_read_under_an_old_table_keeps_its_pin() -> None:
    h = Harness(table(backend("a", A)))
    conn_a, _ = h.idle(A)
    client, downstream = h.client()
    # the first request holds the connection; the pinned one is read under this table
    client.data_received(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: x\r\nX-Alwayson-Track: candidate\r\n\r\n"
    )
    h.install(table(backend("a", A), backend("c", B, weight=0, track="candidate")))
    conn_b, upstream_b = h.idle(B)
    conn_a.data_received(OK_RESPONSE)
    assert upstream_b.take().startswith(b"GET /2 ")
    conn_b.data_received(OK_RESPONSE)
    assert downstream.take().count(b"HTTP/1.1 200 OK") == 2


# -- answers of the gateway itself, counted ------------------------------------------------


def test_local_5xx_answers_are_counted_by_service_and_exact_code() -> None:
    h = Harness(table(backend("a", A), path_prefix="/accounts"))
    client, downstream = h.client()
    client.data_received(b"GET /accounts HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connected(h.pools[A].pending.pop(), None)
    client.connected(h.pools[A].pending.pop(), None)  # connect failed twice: 503
    assert error_of(downstream.take())[0] == 503
    client.data_received(b"GET /loans HTTP/1.1\r\nHost: x\r\n\r\n")  # 404: not counted
    assert error_of(downstream.take())[0] == 404
    assert h.metrics.local_responses == {("accounts", 503): 1}
    rendered = h.metrics.render().decode()
    assert 'alwayson_gateway_local_responses_total{code="503",service="accounts"} 1.0' in rendered


def test_local_5xx_without_a_route_counts_under_an_empty_service() -> None:
    h = Harness(RouteTable(generation=0, site="jakarta", routes=[]))
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert error_of(downstream.take())[0] == 503
    client2, downstream2 = h.client()
    client2.data_received(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    assert error_of(downstream2.take())[0] == 505
    assert h.metrics.local_responses == {("", 503): 1, ("", 505): 1}


def test_backend_timeout_is_counted_as_a_local_504() -> None:
    h = Harness(table(backend("a", A)))
    h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    client.check_timeouts(h.clock.now + 31)
    assert error_of(downstream.take())[0] == 504
    assert h.metrics.local_responses == {("accounts", 504): 1}


# -- two dead instances at once: connect retries -------------------------------------------

C = "127.1.1.3:8000"


def take_pending(h: Harness) -> tuple[str, Exchange]:
    """The one connect in progress: the address it goes to, and its exchange."""
    ((address, exchange),) = [
        (address, pool.pending.pop()) for address, pool in h.pools.items() if pool.pending
    ]
    return address, exchange


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_request_refused_by_two_dead_backends_reaches_the_third(method: bytes) -> None:
    h = Harness(table(backend("a", A), backend("b", B), backend("c", C)))
    conn_c, upstream_c = h.idle(C)
    h.pools[C].ejected_until = h.clock.now + 5  # A and B get the first two attempts
    client, downstream = h.client()
    client.data_received(method + b" /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    first, exchange = take_pending(h)
    client.connected(exchange, None)  # dead
    second, exchange = take_pending(h)
    assert {first, second} == {A, B}
    h.pools[C].ejected_until = 0
    client.connected(exchange, None)  # dead as well
    _, _, body = split(upstream_c.take())
    assert body == b"hi"
    conn_c.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.metrics.retries == {"accounts": 2}
    assert h.metrics.connect_errors == {("accounts", "a"): 1, ("accounts", "b"): 1}
    assert h.metrics.local_responses == {}
    assert all(pool.outstanding == 0 for pool in h.pools.values())


def test_connect_retries_stop_when_every_backend_was_tried() -> None:
    h = Harness(table(backend("a", A), backend("b", B), backend("c", C)))
    client, downstream = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    tried = []
    for _ in range(3):
        address, exchange = take_pending(h)
        tried.append(address)
        client.connected(exchange, None)
    assert sorted(tried) == [A, B, C]
    assert all(pool.pending == [] for pool in h.pools.values())  # no fourth attempt
    status, document = error_of(downstream.take())
    assert status == 503 and "connect failed" in document["error"]
    assert h.metrics.local_responses == {("accounts", 503): 1}


def test_connect_retries_try_every_backend_even_when_all_were_ejected() -> None:
    h = Harness(table(backend("a", A), backend("b", B), backend("c", C)))
    for address in (A, B):
        h.pools[address].ejected_until = h.clock.now + 5  # ejected earlier
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    address, exchange = take_pending(h)
    assert address == C  # the only usable one
    conn_c, _ = h.fresh(C)
    client.connected(exchange, conn_c)
    h.pools[C].ejected_until = h.clock.now + 5
    conn_c.connection_lost(ConnectionResetError())  # C dies mid-request: the one retry
    tried = []
    for _ in range(2):  # A and B, dead: each is tried once, ejected or not
        address, exchange = take_pending(h)
        tried.append(address)
        client.connected(exchange, None)
    assert sorted(tried) == [A, B]
    assert all(pool.pending == [] for pool in h.pools.values())  # every backend was tried
    assert error_of(downstream.take())[0] == 503


def test_get_reset_by_a_dying_backend_then_refused_by_another_reaches_a_third() -> None:
    h = Harness(table(backend("a", A), backend("b", B), backend("c", C)))
    conn_a, _ = h.fresh(A)
    conn_c, upstream_c = h.idle(C)
    h.pools[B].ejected_until = h.pools[C].ejected_until = h.clock.now + 5
    client, downstream = h.client()
    client.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connected(h.pools[A].pending.pop(), conn_a)
    h.pools[B].ejected_until = 0
    h.pools[C].ejected_until = h.clock.now + 5  # the retry goes to B
    conn_a.connection_lost(ConnectionResetError())  # the one retry of an idempotent request
    h.pools[C].ejected_until = 0
    client.connected(h.pools[B].pending.pop(), None)  # then a connect retry
    assert upstream_c.take().startswith(b"GET /x ")
    conn_c.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"


def test_post_reset_by_a_dying_backend_is_still_not_retried() -> None:
    h = Harness(table(backend("a", A), backend("b", B), backend("c", C)))
    conn_a, _ = h.idle(A)
    h.pools[B].ejected_until = h.pools[C].ejected_until = h.clock.now + 5
    client, downstream = h.client()
    client.data_received(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    h.pools[B].ejected_until = h.pools[C].ejected_until = 0
    conn_a.connection_lost(ConnectionResetError())
    assert error_of(downstream.take())[0] == 502
    assert h.pools[B].pending == h.pools[C].pending == [] and h.metrics.retries == {}
