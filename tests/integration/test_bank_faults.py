"""The bank's bad versions for release drills: ``--fail-rate`` and ``--delay``.

Each test starts one real service process (``python -m bank.accounts --fail-rate 0.3``…)
on an address of this run's own loopback subnet and stops it by pid, even when it fails.
The fail rate is a deterministic counter, so the counts asserted here are exact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
from tests.integration.test_bank_services import (
    BANK,
    Launcher,
    Service,
    free_port,
    healthy,
    wait_ready,
)
from tests.support import reserve_subnet

FAULTED = "/accounts?customer_id=cus_1"


@pytest.fixture(scope="module")
def net() -> str:
    """The first three octets of addresses no other test run uses."""
    return f"127.{reserve_subnet()}.0"


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


def environment(host: str, port: int, name: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOST": host,
        "PORT": str(port),
        "ALWAYSON_SITE": "jakarta",
        "ALWAYSON_SERVICE": name,
        "ALWAYSON_INSTANCE": f"{name}-faults-{port}",
        "ALWAYSON_VERSION": "1.1.0-bad",
        "ALWAYSON_GATEWAY": "",
    }


def start(launcher: Launcher, name: str, host: str, *flags: str) -> Service:
    """Like ``Launcher.start`` with flags on the command line; stopped by ``launcher``."""
    port = free_port(host)
    log = launcher.logs / f"{name}-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"bank.{name}", *flags],
            cwd=BANK,
            env=environment(host, port, name),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, host, port, proc, log)
    launcher.started.append(service)
    wait_ready([service])
    return service


def counted(metrics: str, route: str, code: int, method: str = "GET") -> int:
    labels = f'service="accounts",method="{method}",route="{route}",code="{code}"'
    found = re.search(rf"^bank_requests_total\{{{re.escape(labels)}\}} (\S+)$", metrics, re.M)
    return int(float(found.group(1))) if found else 0


def duration_bucket(metrics: str, route: str, le: str) -> int:
    labels = f'service="accounts",method="GET",route="{route}",le="{le}"'
    pattern = rf"^bank_request_duration_seconds_bucket\{{{re.escape(labels)}\}} (\S+)$"
    found = re.search(pattern, metrics, re.M)
    assert found, f"no bucket {le} of {route}"
    return int(float(found.group(1)))


@pytest.mark.parametrize(
    ("rate", "requests", "failing"),
    [
        ("0.3", 10, [4, 7, 10]),
        ("0.25", 8, [4, 8]),
        ("1/3", 9, [3, 6, 9]),
        ("1", 4, [1, 2, 3, 4]),
        ("0", 5, []),
    ],
)
def test_fail_rate_fails_exactly_the_counted_requests(
    launcher: Launcher, net: str, rate: str, requests: int, failing: list[int]
) -> None:
    service = start(launcher, "accounts", f"{net}.1", "--fail-rate", rate)
    statuses = []
    with httpx.Client(base_url=service.url, timeout=5) as client:
        for n in range(1, requests + 1):
            # probes and scrapes in between are neither failed nor counted
            assert client.get("/healthz").status_code == 200
            assert client.get("/metrics").status_code == 200
            assert client.head("/").status_code == 200
            answer = client.get(FAULTED)
            statuses.append(answer.status_code)
            if n in failing:
                assert answer.json() == {
                    "error": "injected failure",
                    "fail_rate": pytest.approx(float(Fraction(rate))),
                    "request_number": n,
                    "service": "accounts",
                }
        metrics = client.get("/metrics").text
        about = client.get("/").json()
    assert [n for n, status in enumerate(statuses, start=1) if status == 500] == failing
    assert all(status == 200 for n, status in enumerate(statuses, 1) if n not in failing)
    assert counted(metrics, "/accounts", 500) == len(failing)
    assert counted(metrics, "/accounts", 200) == requests - len(failing)
    assert counted(metrics, "/healthz", 500) == 0
    assert counted(metrics, "/healthz", 200) >= requests
    if failing:
        assert about["faults"] == {"fail_rate": pytest.approx(float(Fraction(rate))), "delay_s": 0}
        assert "injecting faults: --fail-rate" in service.log.read_text()
    else:
        assert "faults" not in about


def test_every_route_and_method_shares_one_counter(launcher: Launcher, net: str) -> None:
    service = start(launcher, "accounts", f"{net}.2", "--fail-rate", "0.5")
    with httpx.Client(base_url=service.url, timeout=5) as client:
        statuses = [
            client.get(FAULTED).status_code,  # 1
            client.post("/accounts", json={"customer_id": "cus_9"}).status_code,  # 2: fails
            client.get("/accounts/acc_missing").status_code,  # 3: the handler's own 404
            client.post("/accounts", json={"customer_id": "cus_9"}).status_code,  # 4: fails
            client.get("/no/such/route").status_code,  # unmatched: not counted
            client.get(FAULTED).status_code,  # 5
        ]
        metrics = client.get("/metrics").text
    assert statuses == [200, 500, 404, 500, 404, 200]
    assert counted(metrics, "/accounts", 500, method="POST") == 2
    assert counted(metrics, "/accounts/{account_id}", 404) == 1


def test_delay_holds_each_request_but_not_probes(launcher: Launcher, net: str) -> None:
    service = start(launcher, "accounts", f"{net}.3", "--delay", "0.3")
    with httpx.Client(base_url=service.url, timeout=5) as client:
        for _ in range(3):
            answer = client.get(FAULTED)
            assert answer.status_code == 200
            assert answer.elapsed.total_seconds() >= 0.3
            assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics").text
        about = client.get("/").json()
    assert about["faults"] == {"fail_rate": 0, "delay_s": 0.3}
    # every delayed request took more than 0.25 s, as the service's own histogram says
    assert duration_bucket(metrics, "/accounts", "0.25") == 0
    assert duration_bucket(metrics, "/accounts", "0.5") == 3
    assert counted(metrics, "/accounts", 200) == 3
    assert duration_bucket(metrics, "/healthz", "0.25") == duration_bucket(
        metrics, "/healthz", "+Inf"
    )


def test_delay_and_fail_rate_together(launcher: Launcher, net: str) -> None:
    service = start(launcher, "accounts", f"{net}.4", "--fail-rate", "0.5", "--delay", "0.2")
    with httpx.Client(base_url=service.url, timeout=5) as client:
        answers = [client.get(FAULTED) for _ in range(4)]
        metrics = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200, 500, 200, 500]
    assert all(a.elapsed.total_seconds() >= 0.2 for a in answers)  # failures are slow too
    assert duration_bucket(metrics, "/accounts", "0.1") == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--fail-rate", "1.5"], "--fail-rate"),
        (["--fail-rate", "-0.1"], "--fail-rate"),
        (["--fail-rate", "lots"], "--fail-rate"),
        (["--fail-rate", "nan"], "--fail-rate"),
        (["--fail-rate"], "--fail-rate"),
        (["--delay", "-1"], "--delay"),
        (["--delay", "nan"], "--delay"),
        (["--delay", "inf"], "--delay"),
        (["--delay", "soon"], "--delay"),
        (["--fail-rates", "0.1"], "--fail-rates"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(net: str, flags: list[str], named: str) -> None:
    host = f"{net}.5"
    port = free_port(host)
    result = subprocess.run(
        [sys.executable, "-m", "bank.accounts", *flags],
        cwd=BANK,
        env=environment(host, port, "accounts"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "python -m bank.accounts" in result.stderr  # the usage line
    assert not healthy(host, port)
