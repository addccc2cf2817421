"""Zero dropped requests through faults, measured by wrk (a load generator not ours).

Each scenario runs wrk against the front door while the fault happens and prints requests
sent, failed and the longest gap between two successful requests of a second, slower
stream (wrk does not report gaps). The figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support import Platform, Stream, Wrk, WrkResult, three_service_spec, wait_for

MIXED = """
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("POST", "/accounts/transfer", {["Content-Type"] = "application/json"},
                      '{"amount": 1}')
  end
  return wrk.format("GET", "/cards/" .. n)
end
"""
GETS = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/accounts/" .. n)
end
"""


@pytest.fixture
def platform(make_platform: Callable[..., Platform], echo_folder: Path) -> Iterator[Platform]:
    running = make_platform(three_service_spec(), folder=echo_folder)
    running.cli("up", "--timeout", "60")
    yield running


def _report(name: str, wrk: WrkResult, stream: Stream) -> None:
    print(
        f"\n[zero-drop] {name}: wrk sent {wrk.requests}, failed {wrk.failed}; "
        f"probe stream sent {stream.sent}, failed {len(stream.failures)}, "
        f"longest gap {stream.longest_gap * 1000:.0f} ms"
    )


def _run(platform: Platform, name: str, script: str, fault: Callable[[], None], tmp: Path) -> None:
    wrk = Wrk(platform.front_door, script, tmp)
    try:
        with Stream(platform.front_door, ["/accounts/1", "/payments/2"], rate=50) as stream:
            stream.wait_sent(40)
            fault()
            stream.wait_sent(60)
        result = wrk.result()
    finally:
        wrk.kill()
    _report(name, result, stream)
    assert result.requests > 1000, result.output
    assert result.failed == 0, result.output
    assert stream.failures == [], stream.failures[:5]


def test_instance_sigkill_drops_no_idempotent_request(platform: Platform, tmp_path: Path) -> None:
    victims = [platform.instances(id="accounts-jakarta-1")[0]["pid"]]

    def fault() -> None:
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            "accounts to be whole again",
            lambda: all(i["ready"] for i in platform.instances(service="accounts")),
            30,
        )

    _run(platform, "instance SIGKILL", GETS, fault, tmp_path)


def test_planned_stop_drops_nothing_of_any_method(platform: Platform, tmp_path: Path) -> None:
    def fault() -> None:
        platform.cli("scale", "accounts", "1")
        platform.cli("scale", "cards", "1")
        wait_for(
            "the scale-down to finish",
            lambda: len(platform.instances(service="cards")) == 2,
            30,
        )

    _run(platform, "planned stop (scale 2 -> 1)", MIXED, fault, tmp_path)


def test_site_gateway_sigkill_drops_no_idempotent_request(
    platform: Platform, tmp_path: Path
) -> None:
    gateway = platform.instances(id="gateway@surabaya")[0]

    def fault() -> None:
        os.kill(gateway["pid"], signal.SIGKILL)
        wait_for(
            "the gateway to be back",
            lambda: (
                (g := platform.instances(id="gateway@surabaya")[0])["ready"]
                and g["pid"] != gateway["pid"]
            ),
            30,
        )

    _run(platform, "site gateway SIGKILL", GETS, fault, tmp_path)


def test_controller_down_gateways_keep_routing(platform: Platform, tmp_path: Path) -> None:
    controller = platform.controller_pid()
    assert controller is not None

    def fault() -> None:
        os.kill(controller, signal.SIGKILL)

    _run(platform, "controller SIGKILL (no controller)", MIXED, fault, tmp_path)
    platform.cli("up", "--timeout", "30")


def test_gateway_restart_hands_sockets_over_and_drops_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    before = {i["id"]: i["pid"] for i in platform.status()["instances"] if i["kind"] != "workload"}
    replaced: list[dict[str, object]] = []

    def fault() -> None:
        for _ in range(2):  # twice in a row: the successor must be able to hand over too
            result = platform.cli("gateway", "restart", "--json", timeout=120)
            replaced.extend(json.loads(result.stdout))

    _run(platform, "gateway restart x2 (socket handover)", MIXED, fault, tmp_path)
    assert len(replaced) == 2 * len(before)
    after = {i["id"]: i for i in platform.status()["instances"] if i["kind"] != "workload"}
    assert all(
        after[ident]["pid"] != pid and after[ident]["ready"] for ident, pid in before.items()
    )
    events = json.loads(platform.cli("events", "--json", "--kind", "crashed").stdout)
    assert events == [], "a handed-over process exits on purpose, never as a crash"
