"""Scraping real HTTP servers on loopback: one serving a metrics file, one port with nobody
listening, and one that accepts connections and never answers. The scrape goes into a
store on disk and is read back with PromQL after a reopen."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support import free_port, wait_for

from alwayson.metrics.promql import QueryEngine
from alwayson.metrics.scraping import Scraper, Target
from alwayson.metrics.series import SeriesStore
from alwayson.spec.observing import Retention

METRICS = """\
# TYPE bank_requests_total counter
bank_requests_total{code="200"} 41
bank_requests_total{code="500"} 1
# TYPE bank_latency_seconds histogram
bank_latency_seconds_bucket{le="0.1"} 30
bank_latency_seconds_bucket{le="+Inf"} 42
bank_latency_seconds_sum 3.5
bank_latency_seconds_count 42
"""
SILENT = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(16)
held = []
while True:
    connection, _ = server.accept()
    held.append(connection)  # read nothing, answer nothing
"""


def accepting(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Ports of a metrics file server and of a server that never answers; both stopped
    by pid at the end, whatever happened."""
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "metrics").write_text(METRICS)
    good, silent = free_port(), free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(good),
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(folder),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", SILENT, str(silent)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        wait_for("the metrics server", lambda: accepting(good), timeout=20)
        wait_for("the silent server", lambda: accepting(silent), timeout=20)
        yield {"good": good, "silent": silent, "down": free_port()}
    finally:
        for proc in started:
            proc.kill()
            proc.wait(timeout=10)


async def test_scrape_real_targets_store_and_query(servers: dict[str, int], tmp_path: Path) -> None:
    targets = [
        Target(
            f"http://127.0.0.1:{servers['good']}/metrics", {"job": "instances", "instance": "good"}
        ),
        Target(
            f"http://127.0.0.1:{servers['down']}/metrics", {"job": "instances", "instance": "down"}
        ),
        Target(
            f"http://127.0.0.1:{servers['silent']}/metrics",
            {"job": "instances", "instance": "silent"},
        ),
    ]
    at = time.time()
    began = time.monotonic()
    async with Scraper(timeout=1.0) as scraper:
        samples = await scraper.scrape_all(targets, at)
    took = time.monotonic() - began

    health = {h.labels["instance"]: h for h in scraper.health.values()}
    assert health["good"].up and health["good"].samples == 6 and health["good"].error is None
    assert not health["down"].up and "ConnectError" in (health["down"].error or "")
    assert not health["silent"].up and health["silent"].error == "timed out after 1s"
    assert 0.9 <= health["silent"].duration < 5.0
    assert took < 5.0  # the three ran side by side, the timeout bounded the slow one

    store = SeriesStore(tmp_path / "tsdb", Retention())
    store.append(samples, at)
    store.close()
    engine = QueryEngine(SeriesStore(tmp_path / "tsdb", Retention()))
    up = {p.labels["instance"]: p.value for p in engine.instant("up", at)}  # type: ignore[union-attr]
    assert up == {"good": 1.0, "down": 0.0, "silent": 0.0}
    assert engine.instant('sum(bank_requests_total{instance="good"})', at)[0].value == 42.0  # type: ignore[index]
    assert engine.instant("scalar(sum(scrape_samples_scraped))", at) == 6.0
    p = engine.instant("histogram_quantile(0.5, bank_latency_seconds_bucket)", at)
    assert p[0].value == pytest.approx(0.1 * 21 / 30)  # type: ignore[index]
