"""A real gateway process with real upstream processes on the sites' loopback subnets:
routing, the admin endpoint (auth, validation, generations, persistence), draining."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from test_gateway_support import (
        GatewayProcess,
        Processes,
        backend_entry,
        free_port,
        http,
        metric_value,
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
        backend_entry,
        free_port,
        http,
        metric_value,
        processes,
        route_table,
        start_gateway,
        start_upstream,
        wait_until,
        write_table,
    )

TOKEN = "integration-token"
UP1 = "127.1.1.1"
UP2 = "127.1.1.2"


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Two upstream processes for the whole module: name → port."""
    logs = tmp_path_factory.mktemp("upstream-logs")
    with processes() as group:
        _, port1 = start_upstream(group, UP1, "accounts-1", logs)
        _, port2 = start_upstream(group, UP2, "loans-1", logs)
        yield {"accounts-1": port1, "loans-1": port2}


@pytest.fixture
def procs() -> Iterator[Processes]:
    with processes() as group:
        yield group


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def bank_table(upstreams: dict[str, int], generation: int = 1) -> dict[str, object]:
    return route_table(
        "jakarta",
        generation,
        {
            "service": "accounts",
            "hosts": ["accounts.bank.local"],
            "path_prefix": "/accounts",
            "backends": [backend_entry("accounts-1", UP1, upstreams["accounts-1"])],
        },
        {
            "service": "loans",
            "hosts": [],
            "path_prefix": "/loans",
            "backends": [backend_entry("loans-1", UP2, upstreams["loans-1"])],
        },
    )


def get(gateway: GatewayProcess, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    status, _, body = http("GET", gateway.url + path, headers=headers)
    return status, json.loads(body) if body else {}


def put_routes(
    gateway: GatewayProcess, document: object, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    status, _, body = http("PUT", gateway.admin_url + "/routes", data, headers)
    return status, json.loads(body)


def test_routes_by_host_and_path(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path, token_file: Path
) -> None:
    routes = write_table(tmp_path / "routes.json", bank_table(upstreams))
    gateway = start_gateway(
        procs, tmp_path, extra=["--routes-file", str(routes), "--token-file", str(token_file)]
    )

    status, answer = get(gateway, "/accounts/42?x=1", Host="accounts.bank.local:8080")
    assert status == 200
    assert answer["name"] == "accounts-1"
    assert answer["path"] == "/accounts/42?x=1"
    assert answer["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert answer["headers"]["x-request-id"]

    # the accounts route wants its host; the loans route takes any host
    assert get(gateway, "/accounts/42", Host="other.local")[0] == 404
    status, answer = get(gateway, "/loans?id=3", Host="whatever", **{"X-Request-Id": "abc"})
    assert (status, answer["name"]) == (200, "loans-1")
    assert answer["headers"]["x-request-id"] == "abc"

    status, answer = get(gateway, "/loansx")
    assert status == 404
    assert answer["error"] and answer["request_id"]

    metrics = http("GET", gateway.admin_url + "/metrics")[2].decode()
    assert (
        metric_value(
            metrics,
            'alwayson_gateway_requests_total{code="2xx",service="accounts",site="jakarta"',
        )
        == 1
    )
    assert metric_value(metrics, 'alwayson_gateway_requests_total{code="4xx"') == 2
    assert metric_value(metrics, "alwayson_gateway_routes_generation") == 1


def test_empty_table_answers_503_until_a_table_is_pushed(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path, token_file: Path
) -> None:
    routes = tmp_path / "state" / "routes.json"  # does not exist yet
    extra = ["--routes-file", str(routes), "--token-file", str(token_file)]
    gateway = start_gateway(procs, tmp_path, extra=extra)
    assert http("GET", gateway.admin_url + "/healthz")[2] == (
        b'{"status": "ok", "generation": 0, "site": "jakarta"}\n'
    )
    status, answer = get(gateway, "/loans")
    assert status == 503
    assert answer["error"] == "this gateway has no route table yet" and answer["request_id"]

    # a catch-all route with no backend yet: 503
    empty = route_table("jakarta", 1, {"service": "loans", "backends": []})
    assert put_routes(gateway, empty)[0] == 200
    assert get(gateway, "/loans")[0] == 503

    assert put_routes(gateway, bank_table(upstreams, 2), token=None)[0] == 401
    assert put_routes(gateway, bank_table(upstreams, 2), token="wrong")[0] == 401
    status, answer = put_routes(gateway, b'{"generation": 2, "site": "jakarta", "routes": [{}]}')
    assert status == 400 and "routes.0.service" in answer["error"]
    assert put_routes(gateway, bank_table(upstreams, 2))[0] == 200
    assert get(gateway, "/loans")[1]["name"] == "loans-1"

    status, answer = put_routes(gateway, bank_table(upstreams, 1))
    assert status == 409 and answer["generation"] == 2
    assert json.loads(http("GET", gateway.admin_url + "/routes")[2])["generation"] == 2

    # the pushed table was saved: a restarted gateway serves it at once
    assert json.loads(routes.read_text())["generation"] == 2
    assert procs.stop(gateway.process) == 0
    again = start_gateway(procs, tmp_path, extra=extra, name="gateway-again")
    assert json.loads(http("GET", again.admin_url + "/healthz")[2])["generation"] == 2
    assert get(again, "/loans")[1]["name"] == "loans-1"


def test_standalone_mode_sends_everything_to_the_upstreams(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path
) -> None:
    extra = ["--upstream", f"http://{UP1}:{upstreams['accounts-1']}"]
    extra += ["--upstream", f"{UP2}:{upstreams['loans-1']}"]
    gateway = start_gateway(procs, tmp_path, extra=extra)
    names = {get(gateway, f"/anything/{i}")[1]["name"] for i in range(40)}
    assert names == {"accounts-1", "loans-1"}
    status, _, body = http("POST", gateway.url + "/chunked", b"x" * 100_000)
    assert status == 200 and json.loads(body)["body_size"] == 100_000
    status, _, body = http("GET", gateway.url + "/big/300000")
    assert status == 200 and len(body) == 300_000
    assert put_routes(gateway, bank_table(upstreams))[0] == 403  # no --token-file


def test_own_site_backends_are_preferred(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path
) -> None:
    table = route_table(
        "jakarta",
        1,
        {
            "service": "accounts",
            "backends": [
                backend_entry("far", UP2, upstreams["loans-1"], site="surabaya"),
                backend_entry("near", UP1, upstreams["accounts-1"], site="jakarta"),
            ],
        },
    )
    routes = write_table(tmp_path / "routes.json", table)
    gateway = start_gateway(procs, tmp_path, extra=["--routes-file", str(routes)])
    assert {get(gateway, "/")[1]["name"] for _ in range(30)} == {"accounts-1"}


def test_sigterm_finishes_in_flight_requests_then_exits_0(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path
) -> None:
    gateway = start_gateway(
        procs, tmp_path, extra=["--upstream", f"{UP1}:{upstreams['accounts-1']}"]
    )
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(http("GET", gateway.url + "/slow/1000", timeout=10)[0])
    )
    slow.start()
    try:
        metrics = gateway.admin_url + "/metrics"

        def in_flight() -> bool:
            text = http("GET", metrics)[2].decode()
            return metric_value(text, "alwayson_gateway_active_connections") >= 1

        wait_until(in_flight, what="the slow request to be in flight")
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=15) == 0
    finally:
        slow.join(timeout=15)
    assert results == [200]
    assert http("GET", gateway.url + "/")[0] == 0  # nobody listens any more


def test_bad_start_is_reported(procs: Processes, tmp_path: Path) -> None:
    host = "127.1.0.1"
    taken = free_port(host)
    start_gateway(procs, tmp_path, host=host, port=taken, name="first")
    process = procs.start(
        [
            sys.executable,
            "-m",
            "alwayson.gateway",
            "--listen",
            f"{host}:{taken}",
            "--admin",
            f"{host}:{free_port(host)}",
            "--site",
            "jakarta",
        ],
        tmp_path / "second.log",
    )
    assert process.wait(timeout=15) == 2
    assert "cannot listen on" in (tmp_path / "second.log").read_text()


def test_slow_backend_is_a_504_after_the_upstream_timeout(
    procs: Processes, upstreams: dict[str, int], tmp_path: Path
) -> None:
    extra = ["--upstream", f"{UP1}:{upstreams['accounts-1']}", "--upstream-timeout", "0.5"]
    gateway = start_gateway(procs, tmp_path, extra=extra)
    status, answer = get(gateway, "/slow/5000")
    assert status == 504
    assert "timed out" in answer["error"]
    assert get(gateway, "/fast")[0] == 200  # the gateway and the backend are fine
