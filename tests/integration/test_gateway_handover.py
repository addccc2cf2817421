"""Restarting a gateway under load without dropping a request: SIGTERM drains keep-alive
connections without cutting a request, and ``--takeover``/``--handover`` pass the
listening sockets to a successor so not one connection is refused. Real processes, a
load client counting every error, and wrk when it is installed."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from test_gateway_support import (
        GatewayProcess,
        KeepAliveLoad,
        Processes,
        free_port,
        http,
        processes,
        start_gateway,
        start_successor,
        start_upstream,
        wait_until,
    )
except ImportError:  # collected as part of a package
    from .test_gateway_support import (
        GatewayProcess,
        KeepAliveLoad,
        Processes,
        free_port,
        http,
        processes,
        start_gateway,
        start_successor,
        start_upstream,
        wait_until,
    )

UPSTREAM = "127.1.1.1"


@pytest.fixture
def procs() -> Iterator[Processes]:
    with processes() as group:
        yield group


@pytest.fixture
def upstream(procs: Processes, tmp_path: Path) -> str:
    _, port = start_upstream(procs, UPSTREAM, "accounts-1", tmp_path)
    return f"{UPSTREAM}:{port}"


def hand_over(
    procs: Processes, tmp_path: Path, old: GatewayProcess, upstream: str, sock: Path, name: str
) -> GatewayProcess:
    """Start a successor taking ``old``'s sockets; return once ``old`` exited (with 0)."""
    extra = ["--upstream", upstream, "--takeover", str(sock), "--handover", str(sock)]
    new = start_successor(procs, tmp_path, old, extra=extra, name=name)
    wait_until(
        lambda: old.process.poll() is not None or new.process.poll() is not None,
        timeout=30,
        what=f"{name} to take over",
    )
    assert new.process.poll() is None, new.log.read_text()
    assert old.process.wait(timeout=5) == 0, old.log.read_text()
    assert "taken over" in new.log.read_text()
    return new


def test_sigterm_cuts_no_request_on_busy_keep_alive_connections(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    gateway = start_gateway(procs, tmp_path, extra=["--upstream", upstream])
    with KeepAliveLoad(gateway.host, gateway.port, connections=8, reconnect=False) as load:
        load.wait_for(400)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=15) == 0
        wait_until(lambda: load.closes == 8, what="every connection to be told to close")
    assert load.failures == []
    assert load.by_method["POST"] > 100 and load.by_method["GET"] > 100


def test_three_handovers_in_a_row_under_load_drop_nothing(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    sock = tmp_path / "gw.sock"
    gateway = start_gateway(
        procs, tmp_path, extra=["--upstream", upstream, "--handover", str(sock)], name="gw-0"
    )
    with KeepAliveLoad(gateway.host, gateway.port, connections=8) as load:
        load.wait_for(300)
        for round_ in range(1, 4):
            gateway = hand_over(procs, tmp_path, gateway, upstream, sock, f"gw-{round_}")
            load.wait_for(300)
        assert http("GET", gateway.admin_url + "/healthz")[0] == 200
    assert load.failures == [], load.failures[:5]
    assert load.closes >= 3 * 8  # every connection was moved over, three times
    assert load.by_method["POST"] > 300


def test_handover_drops_nothing_under_wrk(procs: Processes, tmp_path: Path, upstream: str) -> None:
    assert shutil.which("wrk"), "wrk is required; scripts/test.sh installs it (apt-get install wrk)"
    sock = tmp_path / "gw.sock"
    gateway = start_gateway(
        procs, tmp_path, extra=["--upstream", upstream, "--handover", str(sock)], name="gw-0"
    )
    output: list[str] = []
    wrk = threading.Thread(
        target=lambda: output.append(
            subprocess.run(
                ["wrk", "-t1", "-c16", "-d8s", gateway.url + "/item"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
    )
    wrk.start()
    try:
        for round_ in range(1, 4):
            gateway = hand_over(procs, tmp_path, gateway, upstream, sock, f"gw-{round_}")
    finally:
        wrk.join(timeout=60)
    (report,) = output
    requests = int(re.search(r"(\d+) requests in", report).group(1))  # type: ignore[union-attr]
    assert requests > 1000, report
    assert "Socket errors" not in report, report
    assert "Non-2xx" not in report, report


def test_takeover_with_nobody_offering_binds_the_addresses(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    sock = tmp_path / "nobody.sock"
    extra = ["--upstream", upstream, "--takeover", str(sock), "--handover", str(sock)]
    gateway = start_gateway(procs, tmp_path, extra=extra)
    assert http("GET", gateway.url + "/x")[0] == 200
    assert sock.exists()  # it offers its own sockets from now on


def test_takeover_refuses_sockets_of_other_addresses(
    procs: Processes, tmp_path: Path, upstream: str
) -> None:
    sock = tmp_path / "gw.sock"
    old = start_gateway(
        procs, tmp_path, extra=["--upstream", upstream, "--handover", str(sock)], name="old"
    )
    elsewhere = start_gateway(
        procs,
        tmp_path,
        port=free_port(old.host),
        extra=["--upstream", upstream, "--takeover", str(sock)],
        name="elsewhere",
    )
    assert "refusing the sockets" in elsewhere.log.read_text()
    # both serve, each on its own address: the old one was not told to go
    assert http("GET", old.url + "/x")[0] == 200
    assert http("GET", elsewhere.url + "/x")[0] == 200
    assert old.process.poll() is None
