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
