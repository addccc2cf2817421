"""Probes: the threshold logic (pure) and ``run_probe`` against tiny in-test servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.runtime.probing import Thresholds, run_probe
from alwayson.spec.models import Probe

# ---------------------------------------------------------------- thresholds


def test_becomes_healthy_at_the_success_threshold() -> None:
    health = Thresholds(success_threshold=3, failure_threshold=2)

    assert [health.record(True) for _ in range(4)] == [None, None, True, None]
    assert health.healthy


def test_becomes_unhealthy_at_the_failure_threshold() -> None:
    health = Thresholds(success_threshold=1, failure_threshold=3, healthy=True)

    assert [health.record(False) for _ in range(4)] == [None, None, False, None]
    assert not health.healthy


def test_a_success_resets_the_failure_count() -> None:
    health = Thresholds(success_threshold=1, failure_threshold=3, healthy=True)

    results = [health.record(ok) for ok in [False, False, True, False, False, True]]

    assert results == [None] * 6
    assert health.healthy


def test_a_failure_resets_the_success_count() -> None:
    health = Thresholds(success_threshold=2, failure_threshold=1)

    assert [health.record(ok) for ok in [True, False, True, True]] == [None, None, None, True]


def test_failures_while_unhealthy_flip_nothing() -> None:
    health = Thresholds(success_threshold=1, failure_threshold=1)

    assert [health.record(False) for _ in range(3)] == [None, None, None]
    assert not health.healthy


def test_threshold_one_flips_on_every_change() -> None:
    health = Thresholds(success_threshold=1, failure_threshold=1)

    assert [health.record(ok) for ok in [True, False, False, True]] == [True, False, None, True]


@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.booleans(),
    st.lists(st.booleans(), max_size=60),
)
def test_flips_happen_exactly_at_the_thresholds(
    success: int, failure: int, start_healthy: bool, results: list[bool]
) -> None:
    health = Thresholds(success, failure, healthy=start_healthy)
    before = start_healthy
    for index, ok in enumerate(results):
        flipped = health.record(ok)
        run = results[: index + 1]
        streak = len(run) - next((i + 1 for i in range(len(run) - 1, -1, -1) if run[i] != ok), 0)
        if flipped is None:
            assert health.healthy == before
        else:
            assert flipped is health.healthy
            assert flipped is not before
            assert flipped is ok
            assert streak >= (success if ok else failure)
        # A streak long enough against the current health always flips it.
        if before is not ok and streak >= (success if ok else failure):
            assert flipped is ok
        before = health.healthy


# ---------------------------------------------------------------- run_probe

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A server on 127.0.0.1 with a free port, closed with its connections at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def answering(status_line: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    return handle


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


HTTP = Probe(http="/healthz", interval=1.0, timeout=1.0)


@pytest.mark.parametrize(
    ("status_line", "ok", "detail"),
    [
        (b"HTTP/1.1 200 OK", True, "HTTP 200"),
        (b"HTTP/1.1 204 No Content", True, "HTTP 204"),
        (b"HTTP/1.1 302 Found", True, "HTTP 302"),
        (b"HTTP/1.1 404 Not Found", False, "HTTP 404"),
        (b"HTTP/1.1 503 Service Unavailable", False, "HTTP 503"),
    ],
)
async def test_http_probe_status(status_line: bytes, ok: bool, detail: str, tmp_path: Path) -> None:
    async with serving(answering(status_line)) as port:
        result = await run_probe(HTTP, "127.0.0.1", port, str(tmp_path))

    assert (result.ok, result.detail) == (ok, detail)
    assert result.seconds >= 0


async def test_http_probe_sends_the_path(tmp_path: Path) -> None:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()

    async with serving(handle) as port:
        await run_probe(Probe(http="/ready?deep=1"), "127.0.0.1", port, str(tmp_path))

    [request] = requests
    assert request.startswith(b"GET /ready?deep=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in request


async def test_http_probe_against_something_else(tmp_path: Path) -> None:
    async with serving(answering(b"SSH-2.0-OpenSSH")) as port:
        result = await run_probe(HTTP, "127.0.0.1", port, str(tmp_path))

    assert not result.ok
    assert result.detail.startswith("not an HTTP response: ")


async def test_http_probe_on_a_closed_port(tmp_path: Path) -> None:
    result = await run_probe(HTTP, "127.0.0.1", closed_port(), str(tmp_path))

    assert not result.ok
    assert result.detail


async def test_http_probe_times_out(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    probe = Probe(http="/healthz", interval=1.0, timeout=0.05)
    try:
        async with serving(silent) as port:
            result = await run_probe(probe, "127.0.0.1", port, str(tmp_path))
            release.set()
    finally:
        release.set()

    assert (result.ok, result.detail) == (False, "timed out after 0.05s")


async def test_tcp_probe(tmp_path: Path) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    probe = Probe(tcp=True)
    async with serving(accept) as port:
        up = await run_probe(probe, "127.0.0.1", port, str(tmp_path))
    down = await run_probe(probe, "127.0.0.1", closed_port(), str(tmp_path))

    assert (up.ok, up.detail) == (True, "tcp connect ok")
    assert not down.ok


async def test_http_probe_by_host_name(tmp_path: Path) -> None:
    async with serving(answering(b"HTTP/1.1 200 OK")) as port:
        result = await run_probe(HTTP, "localhost", port, str(tmp_path))

    assert (result.ok, result.detail) == (True, "HTTP 200")


async def test_http_probe_reads_only_the_status_line(tmp_path: Path) -> None:
    """A status line split over several writes is read whole; what follows is not read."""

    async def slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for part in (b"HTTP/1.1 2", b"04 No Content\r\n", b"X-Pad: " + b"x" * 100_000):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)

    async with serving(slowly) as port:
        result = await run_probe(HTTP, "127.0.0.1", port, str(tmp_path))

    assert (result.ok, result.detail) == (True, "HTTP 204")


async def test_http_probe_against_an_endless_line(tmp_path: Path) -> None:
    async with serving(answering(b"x" * 100_000)) as port:
        result = await run_probe(HTTP, "127.0.0.1", port, str(tmp_path))

    assert not result.ok
    assert result.detail.startswith("not an HTTP response: b'xxx")
