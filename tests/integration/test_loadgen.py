"""The load generator against a real HTTP server (tests/apps/echo.py) on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.support import APPS, free_port, wait_for

from alwayson.loadgen import (
    ClientError,
    ClosedModel,
    HttpClient,
    LoadTest,
    LoadTestError,
    OpenModel,
    Request,
    RunResult,
    Session,
    UrlList,
    run_in_loop,
    run_load_sync,
    run_workers,
)

StartEcho = Callable[..., str]


@pytest.fixture
def echo() -> Iterator[StartEcho]:
    """Start echo.py with the given flags; its base URL. Stopped by pid at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(APPS / "echo.py"), *flags],
            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)

        def accepting() -> bool:
            assert proc.poll() is None, f"echo.py exited with {proc.returncode}"
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True

        wait_for("echo.py to accept connections", accepting, timeout=15)
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # by pid; echo's graceful drain is not under test here
            proc.wait(timeout=10)


def test_an_open_model_run_holds_its_rate_without_errors(echo: StartEcho) -> None:
    url = echo()
    test = LoadTest(
        url,
        UrlList([Request("/a"), Request("/b", "POST", json={"amount": 5})]),
        OpenModel.constant(rate=100, duration=3, max_lag=5.0),
    )

    result = run_load_sync(test)

    assert result.sent == 300  # the schedule, exactly
    assert (result.ok, result.failed, result.dropped) == (300, 0, 0)
    assert 85 <= result.rps <= 105
    assert {n: s.ok for n, s in result.steps.items()} == {"GET /a": 150, "POST /b": 150}
    series = result.to_json()["series"]
    assert sum(r["sent"] for r in series) == 300
    assert 3 <= len(series) <= 5


def test_a_slow_server_shows_its_queueing_and_drops_are_counted(echo: StartEcho) -> None:
    # Each request takes 0.2 s; 4 connections serve at most 20/s; 40/s arrive, at most 8
    # may be in flight: 4 on the wire, 4 waiting for a connection. The waiting shows in
    # latency (from the intended start) and the rest is dropped, not delayed.
    url = echo("--delay", "0.2")
    test = LoadTest(
        url,
        UrlList([Request("/slow")]),
        OpenModel.constant(rate=40, duration=3, max_in_flight=8, max_lag=5.0),
        connections=4,
    )

    result = run_load_sync(test)

    assert result.sent + result.dropped == 120
    assert result.dropped >= 30
    assert result.failed == 0
    p50, p99 = result.latency.percentile_us(50), result.latency.percentile_us(99)
    assert p50 is not None and p50 >= 200_000
    assert p99 is not None and p99 >= 350_000  # served after waiting for a connection
    assert sum(r.dropped for r in result.series()) == result.dropped


def test_two_workers_send_the_whole_schedule_and_merge_to_its_sum(echo: StartEcho) -> None:
    url = echo()
    test = LoadTest(
        url, UrlList([Request("/w")]), OpenModel.constant(rate=100, duration=2, max_lag=5.0)
    )

    result = run_workers(test, 2)

    assert result.workers == 2
    assert (result.sent, result.ok, result.failed, result.dropped) == (200, 200, 0, 0)
    assert result.steps["GET /w"].requests == 200
    assert result.latency.count == 200
    assert sum(r.sent for r in result.series()) == 200
    assert sum(r.ok for r in result.series()) == 200
    assert 80 <= result.rps <= 105


def test_a_closed_model_loops_its_users_until_the_duration_ends(echo: StartEcho) -> None:
    url = echo("--delay", "0.05")
    test = LoadTest(url, UrlList([Request("/c")]), ClosedModel(users=4, duration=1.0))

    result = run_load_sync(test)

    # 4 users, each at most one request per 50 ms: at most ~80, surely more than 20.
    assert 20 <= result.sent <= 84
    assert result.sent == result.ok
    assert result.dropped == 0
    p50 = result.latency.percentile_us(50)
    assert p50 is not None and p50 >= 50_000


@dataclass(frozen=True)
class DieOnce:
    """The first worker to run it dies at once (as a crash would); the others hang."""

    marker: Path

    async def __call__(self, session: Session) -> None:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            await asyncio.sleep(120)
        else:
            os._exit(3)


def test_a_worker_that_dies_fails_the_run_and_every_worker_is_stopped(
    echo: StartEcho, tmp_path: Path
) -> None:
    url = echo()
    test = LoadTest(url, DieOnce(tmp_path / "died"), OpenModel.constant(rate=20, duration=2))
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    with pytest.raises(LoadTestError, match=r"exited with 3 before sending its result"):
        run_workers(test, 2)

    # The hanging worker would sleep for two minutes: it was stopped by its pid.
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert left == set()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_short_soak_writes_snapshots_and_a_rolling_report(
    echo: StartEcho, tmp_path: Path, workers: str
) -> None:
    url = echo()
    folder = tmp_path / "soak"
    run = subprocess.run(
        [
            sys.executable, "-m", "alwayson.cli.main", "loadtest", f"{url}/soak",
            "--rate", "50", "--duration", "6s", "--workers", workers,
            "--soak", "--snapshot-every", "2s", "--report-dir", str(folder), "--json",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout)

    snapshots = sorted(folder.glob("snapshot-*.json"))
    print([p.name for p in snapshots], final["iterations"], final["memory"])
    assert len(snapshots) >= 3  # at least two while running, and the last one
    figures = [json.loads(p.read_text()) for p in snapshots]
    sent = [f["iterations"]["sent"] for f in figures]
    assert sent == sorted(sent) and 0 < sent[0] < sent[-1] == final["iterations"]["sent"] == 300
    for data in figures:
        result = RunResult.from_json(data)  # every snapshot is a whole, mergeable result
        assert sum(r.sent for r in result.rows.values()) == result.sent
    # Memory at each snapshot, over every generator process; the workers are gone by the
    # last one, so a multi-process run's last snapshot adds no sample.
    sampled = len(snapshots) - (workers == "2")
    assert [m["snapshot"] for m in final["memory"]] == list(range(1, sampled + 1))
    assert all(m["rss_mib"] > 5 for m in final["memory"])
    assert {m["processes"] for m in final["memory"]} == {1 + (workers == "2") * 2}
    page = (folder / "report.html").read_text()
    assert "Generator memory (RSS" in page
    assert page.count('<img src="data:image/png;base64,') == 3


# -- the lean HTTP/1.1 client against a real server ----------------------------------------

RAW_SERVER = r"""
import asyncio, os, sys

CONNECTIONS = [0]


async def handle(reader, writer):
    CONNECTIONS[0] += 1
    me = CONNECTIONS[0]
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            method, path, _ = line.split(" ", 2)
            length = 0
            for row in head.split(b"\r\n")[1:]:
                if row.lower().startswith(b"content-length:"):
                    length = int(row.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if path == "/keep" or path == "/echo":
                text = f"connection {me}".encode() if path == "/keep" else body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text) + text)
            elif path == "/head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"alpha-", b"beta-", b"gamma"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
            elif path == "/close":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n")
                writer.write(b"Connection: close\r\n\r\nbye")
                await writer.drain()
                break
            elif path == "/eof":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
                await writer.drain()
                break
            elif path == "/drop":
                break
            elif path == "/half":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
                await writer.drain()
                break
            elif path == "/hang":
                await asyncio.sleep(60)
            elif path == "/garbage":
                writer.write(b"SMTP READY\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


@pytest.fixture
def raw_server(tmp_path: Path) -> Iterator[str]:
    script = tmp_path / "raw_server.py"
    script.write_text(RAW_SERVER)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    try:

        def accepting() -> bool:
            assert proc.poll() is None, f"the raw server exited with {proc.returncode}"
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True

        wait_for("the raw server", accepting, timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def client_run(base: str, calls: Callable[[HttpClient], Any], **options: Any) -> Any:
    async def main() -> Any:
        client = HttpClient(base, **options)
        try:
            return await calls(client)
        finally:
            await client.aclose()

    return run_in_loop(main)


def test_the_client_keeps_connections_alive_and_reads_every_kind_of_body(raw_server: str) -> None:
    async def calls(client: HttpClient) -> list[Any]:
        keep = [(await client.request("GET", "/keep")).text for _ in range(3)]
        chunked = await client.request("GET", "/chunked")
        echo = await client.request("POST", "/echo", json={"amount": 5})
        head = await client.request("HEAD", "/head")
        after_head = (await client.request("GET", "/keep")).text
        closing = await client.request("GET", "/close")
        after_close = (await client.request("GET", "/keep")).text
        eof = await client.request("GET", "/eof")
        return [keep, chunked, echo, head, after_head, closing, after_close, eof]

    keep, chunked, echo, head, after_head, closing, after_close, eof = client_run(raw_server, calls)

    assert keep == [keep[0]] * 3  # one connection, reused
    assert (chunked.status_code, chunked.content) == (200, b"alpha-beta-gamma")
    assert echo.json() == {"amount": 5}
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "1234")
    assert after_head == keep[0]  # a HEAD's Content-Length is no body
    assert (closing.text, closing.headers["Connection"]) == ("bye", "close")
    assert after_close not in keep  # the server closed the first: a new one
    assert eof.content == b"until the end"


def test_the_client_names_each_failure(raw_server: str) -> None:
    async def calls(client: HttpClient) -> dict[str, str]:
        kinds = {}
        for path in ("/drop", "/half", "/hang", "/garbage"):
            try:
                await client.request("GET", path)
                kinds[path] = "answered"
            except ClientError as exc:
                kinds[path] = exc.kind
        kinds["after"] = (await client.request("GET", "/keep")).text
        return kinds

    kinds = client_run(raw_server, calls, timeout=0.5)

    assert kinds["/drop"] == "reset"  # a fresh connection closed with no answer
    assert kinds["/half"] == "reset"
    assert kinds["/hang"] == "timeout"
    assert kinds["/garbage"] == "bad response"
    assert kinds["after"].startswith("connection ")  # the client goes on working

    refused = f"http://127.0.0.1:{free_port()}"

    async def refuse(client: HttpClient) -> str:
        try:
            await client.request("GET", "/")
        except ClientError as exc:
            return exc.kind
        return "answered"

    assert client_run(refused, refuse) == "connect refused"


def test_a_kept_alive_connection_closed_while_idle_is_replaced(echo: StartEcho) -> None:
    url = echo()

    async def calls(client: HttpClient) -> list[int]:
        first = await client.request("GET", "/a")
        # The server closes idle connections when told "Connection: close" on the next
        # request; simulate a server that closed it by closing its transport ourselves.
        pool = next(iter(client._pools.values()))
        conn = pool.idle[0]
        conn.transport.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 5.0
        while not conn.lost:  # until the loop has told the connection it is gone
            assert time.monotonic() < deadline, "the closed connection was never lost"
            await asyncio.sleep(0.001)
        second = await client.request("GET", "/b")
        return [first.status_code, second.status_code]

    assert client_run(url, calls) == [200, 200]


def test_the_pool_holds_at_most_its_connections_and_requests_wait_for_one(echo: StartEcho) -> None:
    url = echo("--delay", "0.1")

    async def calls(client: HttpClient) -> tuple[list[int], int]:
        answers = await asyncio.gather(*(client.request("GET", f"/{k}") for k in range(8)))
        opened = sum(pool.open for pool in client._pools.values())
        return [a.status_code for a in answers], opened

    statuses, opened = client_run(url, calls, max_connections=2)

    assert statuses == [200] * 8
    assert opened == 2
