"""The load generator against a real HTTP server (tests/apps/echo.py) on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from tests.support import APPS, free_port, wait_for

from alwayson.loadgen import (
    ClosedModel,
    LoadTest,
    LoadTestError,
    OpenModel,
    Request,
    Session,
    UrlList,
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
