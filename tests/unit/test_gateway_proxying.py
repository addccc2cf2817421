"""The proxy's protocols driven by hand with in-memory transports: header rewriting,
framing, retries, timeouts, pipelining, local errors. No sockets, no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alwayson.gateway.balancing import compile_table
from alwayson.gateway.exchanges import CoarseClock, Exchange, ProxyContext
from alwayson.gateway.headers import RequestIds
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.proxying import ClientConnection
from alwayson.gateway.routes import Backend, Route, RouteTable
from alwayson.gateway.upstreams import Upstream, UpstreamConnection


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("10.9.8.7", 40000)) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class FakeUpstream(Upstream):
    """Connects only when the test says so."""

    __slots__ = ("pending",)

    def __init__(self, host: str, port: int, clock: CoarseClock) -> None:
        super().__init__(host, port, clock=clock)
        self.pending: list[Exchange] = []

    def connect(self, exchange: Exchange) -> None:
        self.pending.append(exchange)


class Harness:
    def __init__(self, table: RouteTable, site: str = "jakarta") -> None:
        self.clock = CoarseClock(100.0)
        self.metrics = GatewayMetrics()
        self.ctx = ProxyContext(
            metrics=self.metrics, clock=self.clock, request_ids=RequestIds(b"rid-")
        )
        self.pools: dict[str, FakeUpstream] = {}
        self.ctx.matcher = compile_table(table, site, self._upstream_for, self.metrics)

    def _upstream_for(self, host: str, port: int) -> Upstream:
        address = f"{host}:{port}"
        if address not in self.pools:
            self.pools[address] = FakeUpstream(host, port, self.clock)
        return self.pools[address]

    def idle(self, address: str) -> tuple[UpstreamConnection, FakeTransport]:
        conn, transport = self.fresh(address)
        self.pools[address].idle.append(conn)
        return conn, transport

    def fresh(self, address: str) -> tuple[UpstreamConnection, FakeTransport]:
        conn = UpstreamConnection(self.pools[address])
        transport = FakeTransport(peer=("127.0.0.1", 1))
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def client(self) -> tuple[ClientConnection, FakeTransport]:
        client = ClientConnection(self.ctx)
        transport = FakeTransport()
        client.connection_made(transport)  # type: ignore[arg-type]
        return client, transport


def backend(name: str, address: str, site: str = "jakarta", weight: int = 100) -> Backend:
    return Backend(id=name, address=address, site=site, version="1.0", weight=weight)


A = "127.1.1.1:8000"
B = "127.1.1.2:8000"


def table(*backends: Backend, **route: Any) -> RouteTable:
    return RouteTable(
        generation=1,
        site="jakarta",
        routes=[Route(service="accounts", backends=list(backends), **route)],
    )


def split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return first, headers, body


OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-app: yes\r\n\r\nhello"


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
    assert headers == {"content-length": "5", "x-app": "yes"}
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


def error_of(raw: bytes) -> tuple[int, dict[str, Any]]:
    first, headers, body = split(raw)
    assert headers["content-type"] == "application/json"
    return int(first.split()[1]), json.loads(body)


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
    assert h.pools[A].ejected_until == h.clock.now + h.ctx.eject_seconds
    assert h.metrics.connect_errors == {("accounts", "a"): 1}
    _, _, body = split(upstream_b.take())
    assert body == b"hi"
    conn_b.data_received(OK_RESPONSE)
    assert split(downstream.take())[0] == "HTTP/1.1 200 OK"
    assert h.pools[A].outstanding == h.pools[B].outstanding == 0


def test_connect_failure_of_the_only_backend_twice_is_502() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.connected(h.pools[A].pending.pop(), None)
    client.connected(h.pools[A].pending.pop(), None)
    status, document = error_of(downstream.take())
    assert status == 502 and "connect failed" in document["error"]


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
    client.check_timeouts(h.clock.now + 5, upstream_timeout=30, idle_timeout=60)
    assert downstream.take() == b""
    client.check_timeouts(h.clock.now + 31, upstream_timeout=30, idle_timeout=60)
    status, _ = error_of(downstream.take())
    assert status == 504
    assert upstream.aborted and conn.exchange is None
    assert h.pools[A].idle == [] and h.pools[A].outstanding == 0


def test_idle_client_connection_is_closed_after_the_idle_timeout() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.check_timeouts(h.clock.now + 61, upstream_timeout=30, idle_timeout=60)
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


def test_draining_closes_after_the_response_in_flight() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    idle_client, idle_downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.start_draining()
    idle_client.start_draining()
    assert idle_downstream.closed and not downstream.closed
    conn.data_received(OK_RESPONSE)
    _, headers, _ = split(downstream.take())
    assert headers["connection"] == "close"
    assert downstream.closed


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


def test_websocket_upgrade_is_501() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    status, _ = error_of(downstream.take())
    assert status == 501 and downstream.closed


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_keep_the_connection(status: int) -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(b"HTTP/1.1 %d Nothing\r\netag: 1\r\n\r\n" % status)
    first, headers, body = split(downstream.take())
    assert first == f"HTTP/1.1 {status} Nothing" and body == b""
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
    assert split(downstream.take())[0] == "HTTP/1.1 413 Too Large"
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
