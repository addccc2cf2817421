"""Property-based tests of the request parsing path (hypothesis), with in-memory transports.

For any bytes a client sends, cut into packets anywhere:

- the gateway never raises, and answers only with well-formed responses: its own errors
  are 4xx (or 501/505) JSON answers after which the connection is closed;
- whatever it forwards is well-formed HTTP/1.1 to a strict, independent parser (h11), and
  when that parser reads the client's bytes as requests too, each forwarded request means
  the same: method, target, end-to-end headers in order, body;
- once the client goes away, no connection, outstanding count or pending exchange is left.

Three sources of bytes: arbitrary binary, well-formed requests (which must all be
forwarded and answered), and well-formed requests with a few bytes inserted, deleted or
replaced by the ones that matter to HTTP framing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from test_gateway_harness import FakeTransport, Harness, backend, table
except ImportError:  # collected as part of a package
    from .test_gateway_harness import FakeTransport, Harness, backend, table

import itertools

from alwayson.gateway.exchanges import Exchange
from alwayson.gateway.relaying import UpstreamConnection

A = "127.1.1.1:8000"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"  # the same for HEAD and GET
REFUSALS = {400, 413, 414, 417, 431, 501, 505}
# Headers the gateway adds, rewrites or consumes: compared separately or not at all.
OWN = {
    b"content-length",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"via",
}
HOP = {
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
}
PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass
class Meaning:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


def read_requests(data: bytes) -> list[Meaning] | None:
    """Requests in ``data`` as a strict parser reads them; None if it finds an error."""
    conn = h11.Connection(h11.SERVER)
    if data:
        conn.receive_data(data)  # b"" would mean the end of the connection to h11
    out: list[Meaning] = []
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return out
            if isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.Request):
                out.append(Meaning(event.method, event.target, list(event.headers), b"", False))
            elif isinstance(event, h11.Data):
                out[-1].body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                out[-1].complete = True
                conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out  # HTTP/1.0 or Connection: close: nothing more is read
                conn.start_next_cycle()
    except h11.RemoteProtocolError:
        return None


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed |= {token.strip().lower() for token in value.split(b",")}
    return [
        (name, value)
        for name, value in headers
        if (name, value) != (b"host", b"")  # what HTTP/1.1 says for "no Host" in 1.0
        and name not in OWN
        and name not in HOP
        and name not in listed
        and not name.startswith(b"proxy-")
    ]


@dataclass
class Outcome:
    forwarded: list[bytes]  # what each backend connection received
    downstream: bytes
    closed: bool


def drive(chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` to a client connection; answer every forwarded request; hang up."""
    h = Harness(table(backend("a", A)))
    conns: list[tuple[UpstreamConnection, FakeTransport]] = [h.idle(A)]
    client, downstream = h.client()
    answered: list[Exchange] = []  # kept alive, so no id is reused

    def pump() -> None:
        progress = True
        while progress:
            progress = False
            pool = h.pools[A]
            while pool.pending:
                exchange = pool.pending.pop(0)
                conn, transport = h.fresh(A)
                conns.append((conn, transport))
                client.connected(exchange, conn)
                progress = True
            for conn, _ in conns:
                exchange = conn.exchange
                if (
                    exchange is not None
                    and exchange.body_done
                    and not any(exchange is done for done in answered)
                ):
                    answered.append(exchange)
                    conn.data_received(ANSWER)
                    progress = True

    for chunk in chunks:
        if downstream.closed:
            break
        client.data_received(chunk)
        pump()
    closed = downstream.closed
    client.connection_lost(None)
    # nothing leaks once the client is gone
    assert client not in h.ctx.clients
    assert h.pools[A].outstanding == 0
    assert all(conn.exchange is None for conn, _ in conns)
    return Outcome(
        [bytes(transport.data) for _, transport in conns], bytes(downstream.data), closed
    )


def responses(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The responses the client got, read with h11 (so they must be well-formed)."""
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    if not raw:
        return out
    conn.receive_data(raw)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return out
        if isinstance(event, h11.Response):
            out.append((event.status_code, dict(event.headers), b""))
        elif isinstance(event, h11.Data):
            status, headers, body = out[-1]
            out[-1] = (status, headers, body + bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return out
            conn.start_next_cycle()
            conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x")]))
            conn.send(h11.EndOfMessage())
        elif isinstance(event, h11.ConnectionClosed):
            return out


def check(data: bytes, outcome: Outcome) -> list[Meaning]:
    """The properties every input must satisfy; returns what was forwarded."""
    forwarded: list[Meaning] = []
    for raw in outcome.forwarded:
        requests = read_requests(raw)
        assert requests is not None, f"the gateway forwarded malformed bytes: {raw!r}"
        forwarded += requests
    for status, headers, body in responses(outcome.downstream):
        if status != 200:
            assert status in REFUSALS, status
            if body:  # an answer to HEAD has none
                assert json.loads(body)["request_id"]
            assert headers[b"connection"] == b"close" and outcome.closed
    reference = read_requests(data)
    if reference is not None:
        for sent, original in zip(forwarded, reference, strict=False):
            assert sent.method == original.method
            if original.target.startswith(b"/"):
                assert sent.target == original.target
            assert end_to_end(sent.headers) == end_to_end(original.headers)
            if original.complete and sent.complete:
                assert sent.body == original.body
    return forwarded


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- strategies ----------------------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1)
VALUE = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80) or b"v"
)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/%=&", max_size=20)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH"]))
    target = b"/" + draw(PATH).encode()
    if draw(st.booleans()):
        target += b"?" + draw(PATH).encode()
    http10 = draw(st.booleans()) and draw(st.booleans())
    lines = [b"%s %s HTTP/%s" % (method, target, b"1.0" if http10 else b"1.1")]
    lines.append(b"Host: " + draw(st.sampled_from([b"x", b"bank.local:8080", b"[::1]"])))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(TOKEN).encode()
        if name.lower() in OWN | HOP | {b"host"} or name.lower().startswith(b"proxy-"):
            continue
        lines.append(name + b": " + draw(VALUE))
    body = draw(st.binary(max_size=64))
    chunked = not http10 and draw(st.booleans())
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 16), max_size=6))
        framed, rest = b"", body
        for size in sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            framed += b"%x\r\n%s\r\n" % (len(piece), piece)
        if rest:
            framed += b"%x\r\n%s\r\n" % (len(rest), rest)
        framed += b"0\r\n\r\n"
    else:
        if body or method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        framed = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + framed


FRAMING_BYTES = st.sampled_from(
    [b" ", b"\t", b"\r", b"\n", b":", b",", b"\x00", b"0", b"9", b"a", b"\x80", b";", b"#"]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(request()))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(FRAMING_BYTES)
        if kind == "insert":
            data[where:where] = byte
        elif where < len(data):
            data[where : where + 1] = b"" if kind == "delete" else byte
    return bytes(data)


# -- properties ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=400), points=st.lists(st.integers(0, 400), max_size=6))
def test_any_bytes_are_forwarded_faithfully_or_refused(data: bytes, points: list[int]) -> None:
    check(data, drive(cut(data, points)))


@PROPERTY_SETTINGS
@given(
    requests=st.lists(request(), min_size=1, max_size=3),
    points=st.lists(st.integers(0, 2000), max_size=8),
)
def test_well_formed_requests_are_all_forwarded_and_answered(
    requests: list[bytes], points: list[int]
) -> None:
    # HTTP/1.0 closes after its response: only the requests up to the first one count
    kept: list[bytes] = []
    for raw in requests:
        kept.append(raw)
        if b" HTTP/1.0\r\n" in raw.split(b"\r\n", 1)[0] + b"\r\n":
            break
    data = b"".join(kept)
    outcome = drive(cut(data, points))
    forwarded = check(data, outcome)
    assert len(forwarded) == len(kept) and all(sent.complete for sent in forwarded)
    answers = responses(outcome.downstream)
    assert [status for status, _, _ in answers] == [200] * len(kept)


@PROPERTY_SETTINGS
@given(data=mutated(), points=st.lists(st.integers(0, 400), max_size=4))
def test_requests_with_framing_bytes_mangled_are_forwarded_faithfully_or_refused(
    data: bytes, points: list[int]
) -> None:
    check(data, drive(cut(data, points)))
