"""Requests that could be read two ways are refused, never forwarded; what is forwarded
keeps its meaning and gains the forwarding headers. In-memory transports."""

from __future__ import annotations

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

H = b"Host: x\r\n"

REFUSED = {
    # framing two ways at once (the classic CL.TE / TE.CL smuggling)
    "content-length and chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "chunked and content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        400,
    ),
    "duplicate content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "conflicting content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
        400,
    ),
    "content-length list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\n", 400),
    "content-length sign": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    "content-length hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    "content-length empty": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    "content-length overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    "transfer-encoding twice": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunked not last": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    "another coding before chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "unknown coding": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 501),
    "transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "space before the colon": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "vertical tab in transfer-encoding": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # line syntax
    "obsolete line folding": (b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n", 400),
    "folding with a tab": (b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n\ttwo\r\n\r\n", 400),
    "bare LF everywhere": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "bare LF after a header": (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    "bare LF ending the head": (b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400),
    "bare CR": (b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
    "whitespace before the first header": (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
    # header names and values
    "space in a name": (b"GET / HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n", 400),
    "empty name": (b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    "NUL in a name": (b"GET / HTTP/1.1\r\n" + H + b"X\x00A: 1\r\n\r\n", 400),
    "non-ASCII name": (b"GET / HTTP/1.1\r\n" + H + b"X\xc3\xa9: 1\r\n\r\n", 400),
    "NUL in a value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\x002\r\n\r\n", 400),
    "control byte in a value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\x012\r\n\r\n", 400),
    "DEL in a value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\x7f2\r\n\r\n", 400),
    # Host
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "Host with a slash": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "Host with a space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    # request line
    "lower-case method": (b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "unknown method": (b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "space in the target": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "tab in the target": (b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400),
    "fragment in the target": (b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute target with another scheme": (b"GET ftp://h/p HTTP/1.1\r\n" + H + b"\r\n", 400),
    "HTTP/2.0 on an HTTP/1 connection": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    # kept alive like HTTP/1.1 requests: the version is still checked
    "HTTP/2.0 with keep-alive": (
        b"GET / HTTP/2.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
        505,
    ),
    "HTTP/2.0 with Proxy-Connection: keep-alive": (
        b"GET / HTTP/2.0\r\n" + H + b"Proxy-Connection: keep-alive\r\n\r\n",
        505,
    ),
    "HTTP/1.2": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    "HTTP/0.9": (b"GET /\r\n\r\n", 505),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    # tunnels the gateway does not offer
    "CONNECT": (b"CONNECT bank:443 HTTP/1.1\r\nHost: bank:443\r\n\r\n", 501),
    "upgrade with a body": (
        b"POST / HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        400,
    ),
}


@pytest.mark.parametrize("raw, status", REFUSED.values(), ids=REFUSED.keys())
def test_ambiguous_or_malformed_requests_are_refused_and_never_forwarded(
    raw: bytes, status: int
) -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(raw)
    client.data_received(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
    got, document = error_of(downstream.take())
    assert got == status
    assert document["request_id"].startswith("rid-")
    assert downstream.closed
    assert upstream.take() == b"" and h.pools[A].pending == []


def test_bad_chunk_after_the_head_was_forwarded_cuts_the_backend_connection() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert upstream.take().startswith(b"POST / HTTP/1.1")  # streaming: the head went on
    client.data_received(b"3\nabc\r\n0\r\n\r\n")  # bare LF after the chunk size
    status, _ = error_of(downstream.take())
    assert status == 400 and downstream.closed
    assert upstream.aborted and upstream.take() == b""  # the backend never gets a whole one
    assert conn.exchange is None and h.pools[A].outstanding == 0


def test_a_refused_request_after_a_good_one_is_answered_in_turn() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )
    assert downstream.take() == b""  # the 400 waits for the response before it
    conn.data_received(OK_RESPONSE)
    raw = downstream.take()
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 400 Bad Request" in raw
    assert downstream.closed


def test_forwarding_headers_are_added_both_ways() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET /a HTTP/1.1\r\nHost: bank.local:8080\r\nVia: 1.0 edge\r\n\r\n")
    raw = upstream.take()
    _, headers, _ = split(raw)
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "bank.local:8080"
    assert headers["x-forwarded-for"] == "10.9.8.7"
    assert b"Via: 1.0 edge\r\n" in raw and b"via: 1.1 alwayson\r\n" in raw
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nX-Request-Id: backend-9\r\n\r\n")
    response = downstream.take()
    assert b"via: 1.1 alwayson\r\n" in response
    assert response.lower().count(b"x-request-id") == 1 and b"backend-9" in response


def test_forwarded_proto_and_host_of_a_front_door_are_kept() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(
        b"GET / HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: bank.example\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    )
    _, headers, _ = split(upstream.take())
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "bank.example"
    assert headers["x-forwarded-for"] == "1.2.3.4, 10.9.8.7"


def test_absolute_form_is_routed_by_its_authority_and_forwarded_in_origin_form() -> None:
    h = Harness(table(backend("a", A), hosts=["accounts.bank"]))
    _, upstream = h.idle(A)
    client, _downstream = h.client()
    client.data_received(b"GET http://accounts.bank/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    raw = upstream.take()
    first, headers, _ = split(raw)
    assert first == "GET /x?y=1 HTTP/1.1"
    assert headers["host"] == "accounts.bank"
    assert b"other" not in raw
    # and a Host naming the route cannot smuggle an absolute target to another host
    client2, downstream2 = h.client()
    client2.data_received(b"GET http://admin.internal/ HTTP/1.1\r\nHost: accounts.bank\r\n\r\n")
    status, _ = error_of(downstream2.take())
    assert status == 404


def test_trailers_of_a_chunked_request_are_dropped() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, _ = h.client()
    client.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nHost: elsewhere\r\nX-Trailer: t\r\n\r\n"
    )
    _, headers, body = split(upstream.take())
    assert body == b"3\r\nabc\r\n0\r\n\r\n"
    assert headers["host"] == "x"


def test_a_framing_header_in_the_trailers_is_refused() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nContent-Length: 99\r\n\r\n"
    )
    status, _ = error_of(downstream.take())
    assert status == 400 and downstream.closed
    assert upstream.take() == b""  # read in one go: refused before anything went on


def test_trailers_of_a_chunked_response_are_dropped() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
        b"0\r\nX-Checksum: 1\r\nUpgrade: websocket\r\n\r\n"
    )
    raw = downstream.take()
    assert raw.endswith(b"\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert b"X-Checksum" not in raw and b"websocket" not in raw
    assert h.pools[A].idle == [conn]


def test_hop_by_hop_response_headers_are_removed() -> None:
    h = Harness(table(backend("a", A)))
    conn, _ = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n"
        b"Upgrade: h2c\r\nX-Kept: yes\r\n\r\nok"
    )
    _, headers, body = split(downstream.take())
    assert body == b"ok" and headers["x-kept"] == "yes"
    for gone in ("connection", "x-internal", "keep-alive", "proxy-authenticate", "trailer"):
        assert gone not in headers
    assert "upgrade" not in headers


def test_client_connection_close_is_honoured() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"connection" not in upstream.take().lower().split(b"\r\n\r\n")[0][4:]
    conn.data_received(OK_RESPONSE)
    assert split(downstream.take())[1]["connection"] == "close"
    assert downstream.closed
    assert h.pools[A].idle == [conn]  # the backend connection is still good


def test_chunked_response_to_a_chunked_request() -> None:
    h = Harness(table(backend("a", A)))
    conn, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.data_received(b"5\r\nhello\r\n")
    client.data_received(b"0\r\n\r\n")
    assert split(upstream.take())[2] == b"5\r\nhello\r\n0\r\n\r\n"
    conn.data_received(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    conn.data_received(b"0\r\n\r\n")
    first, headers, body = split(downstream.take())
    assert first == "HTTP/1.1 201 Created" and headers["transfer-encoding"] == "chunked"
    assert body == b"2\r\nok\r\n0\r\n\r\n"


def test_expect_100_continue_is_not_answered_for_http10() -> None:
    h = Harness(table(backend("a", A)))
    _, upstream = h.idle(A)
    client, downstream = h.client()
    client.data_received(
        b"PUT / HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert downstream.take() == b""
    assert upstream.take().startswith(b"PUT / HTTP/1.1")


def test_expect_100_continue_to_an_unknown_route_gets_the_final_answer_only() -> None:
    h = Harness(table(backend("a", A), path_prefix="/a"))
    client, downstream = h.client()
    client.data_received(
        b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    raw = downstream.take()
    assert raw.startswith(b"HTTP/1.1 404") and b"100 Continue" not in raw
    assert downstream.closed  # the body may still come: it cannot be told from a request


def test_other_expectations_are_417() -> None:
    h = Harness(table(backend("a", A)))
    client, downstream = h.client()
    client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n")
    status, _ = error_of(downstream.take())
    assert status == 417
