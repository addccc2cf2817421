"""HTTP correctness, limits and bad input against a real gateway process and real
upstream processes: WebSocket pass-through, 50 MiB bodies both ways in bounded memory,
Expect: 100-continue, slowloris, the connection limit, per-route body limits, backends
that reset or answer garbage. Other clients are never affected."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from test_gateway_support import (
        GatewayProcess,
        Processes,
        SteadyLoad,
        backend_entry,
        http,
        metric_value,
        peak_rss_kib,
        processes,
        route_table,
        start_gateway,
        start_upstream,
        wait_until,
        write_table,
    )
except ImportError:  # collected as part of a package
    from .test_gateway_support import (
        GatewayProcess,
        Processes,
        SteadyLoad,
        backend_entry,
        http,
        metric_value,
        peak_rss_kib,
        processes,
        route_table,
        start_gateway,
        start_upstream,
        wait_until,
        write_table,
    )

UPSTREAM = "127.1.1.1"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("upstream-logs")
    with processes() as group:
        _, port = start_upstream(group, UPSTREAM, "accounts-1", logs)
        yield f"{UPSTREAM}:{port}"


@pytest.fixture
def procs() -> Iterator[Processes]:
    with processes() as group:
        yield group


def connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
    return sock


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_websocket_upgrade_is_tunnelled_both_ways(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(procs, tmp_path, extra=["--upstream", upstream])
    with connect(gateway) as sock:
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: bank\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower() and b"x-upstream: accounts-1" in head.lower()
        for message in (b"\x81\x05hello", b"\x82\x03\x00\x01\x02", b"x" * 200_000):
            sock.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += sock.recv(65536)
            assert echoed == message
        metrics = http("GET", gateway.admin_url + "/metrics")[2].decode()
        assert metric_value(metrics, "alwayson_gateway_active_tunnels") == 1
    wait_until(
        lambda: (
            metric_value(
                http("GET", gateway.admin_url + "/metrics")[2].decode(),
                "alwayson_gateway_active_tunnels",
            )
            == 0
        ),
        what="the tunnel to close with the client",
    )


def test_50_mib_bodies_stream_both_ways_in_bounded_memory(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    extra = ["--upstream", upstream, "--max-body-bytes", str(64 * MIB)]
    gateway = start_gateway(procs, tmp_path, extra=extra)
    pid = gateway.process.pid
    before = peak_rss_kib(pid)
    size = 50 * MIB
    # upload, with Content-Length, written as fast as the gateway takes it
    with connect(gateway) as sock:
        sock.sendall(b"PUT /upload HTTP/1.1\r\nHost: bank\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * MIB
        for _ in range(50):
            sock.sendall(block)
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        body = head.split(b"\r\n\r\n", 1)[1]
        while not body.endswith(b"}"):
            body += sock.recv(65536)
        assert json.loads(body)["body_size"] == size
    # chunked upload
    with connect(gateway) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: bank\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (MIB, b"c" * MIB)
        for _ in range(50):
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\n")
        head = read_head(sock)
        body = head.split(b"\r\n\r\n", 1)[1]
        while not body.endswith(b"}"):
            body += sock.recv(65536)
        assert json.loads(body)["body_size"] == size
    # download, read more slowly than the backend writes it
    with connect(gateway) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /big/%d HTTP/1.1\r\nHost: bank\r\nConnection: close\r\n\r\n" % size)
        received = 0
        while True:
            data = sock.recv(16 * 1024)
            if not data:
                break
            received += len(data)
    assert received > size
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    assert grown_mib < 20, f"the gateway's peak RSS grew by {grown_mib:.1f} MiB"


def test_expect_100_continue_gets_a_100_then_the_answer(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(procs, tmp_path, extra=["--upstream", upstream])
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /pay HTTP/1.1\r\nHost: bank\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert read_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")


def test_body_over_the_route_limit_is_413(procs: Processes, tmp_path: Path, upstream: str) -> None:
    host, port = upstream.split(":")
    route = {
        "service": "accounts",
        "max_body_bytes": 1000,
        "backends": [backend_entry("accounts-1", host, int(port))],
    }
    routes = write_table(tmp_path / "routes.json", route_table("jakarta", 1, route))
    gateway = start_gateway(procs, tmp_path, extra=["--routes-file", str(routes)])
    status, _, body = http("POST", gateway.url + "/pay", b"x" * 1000)
    assert status == 200
    status, _, body = http("POST", gateway.url + "/pay", b"x" * 1001)
    assert status == 413 and json.loads(body)["request_id"]


def test_slowloris_gets_408_and_others_are_served(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(
        procs, tmp_path, extra=["--upstream", upstream, "--header-timeout", "1"]
    )
    slow = [connect(gateway) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bank\r\nX-Slow: ")
        with SteadyLoad(gateway.host, gateway.port, threads=2) as load:
            answers = [read_until_closed(sock) for sock in slow]
            load.wait_for(50)
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["request_id"]
        assert load.failures == []
        request_id = json.loads(answers[0].split(b"\r\n\r\n", 1)[1])["request_id"]
        assert request_id in gateway.log.read_text()
    finally:
        for sock in slow:
            sock.close()


def test_connections_beyond_the_limit_are_closed_at_once(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(
        procs, tmp_path, extra=["--upstream", upstream, "--max-connections", "5"]
    )
    held = [connect(gateway) for _ in range(5)]
    try:
        for sock in held:  # each is served (and thus surely accepted)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bank\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        extra = connect(gateway)
        extra.sendall(b"GET / HTTP/1.1\r\nHost: bank\r\n\r\n")
        assert read_until_closed(extra) == b""
        extra.close()
        metrics = http("GET", gateway.admin_url + "/metrics")[2].decode()
        assert metric_value(metrics, "alwayson_gateway_rejected_connections_total") == 1
        held.pop().close()
        wait_until(lambda: http("GET", gateway.url + "/")[0] == 200, what="a free slot")
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("path", ["/garbage", "/reset"])
def test_backend_answering_garbage_or_resetting_is_502_and_others_are_served(
    procs: Processes, tmp_path: Path, upstream: str, path: str
) -> None:
    gateway = start_gateway(procs, tmp_path, extra=["--upstream", upstream])
    with SteadyLoad(gateway.host, gateway.port, threads=2) as load:
        for _ in range(5):
            status, headers, body = http("GET", gateway.url + path)
            assert status == 502
            assert json.loads(body)["request_id"] == headers["x-request-id"]
        load.wait_for(50)
    assert load.failures == []
    assert headers["x-request-id"] in gateway.log.read_text()


def test_request_smuggling_attempt_is_refused_on_the_wire(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(procs, tmp_path, extra=["--upstream", upstream])
    with connect(gateway) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: bank\r\nContent-Length: 44\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /admin HTTP/1.1\r\nHost: bank\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1") == 1
