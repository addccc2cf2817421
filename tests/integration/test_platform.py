"""A three-service platform across two sites, with real processes and real faults."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support import Platform, Stream, three_service_spec, wait_for

PATHS = ["/accounts/1", "/cards/2", "/payments/3"]


@pytest.fixture
def running(make_platform: Callable[..., Platform], echo_folder: Path) -> Platform:
    platform = make_platform(three_service_spec(), folder=echo_folder)
    platform.cli("up", "--timeout", "60")
    return platform


def test_every_instance_ready_and_reachable_through_the_front_door(running: Platform) -> None:
    status = running.status()
    assert status["converged"] is True
    workloads = [i for i in status["instances"] if i["kind"] == "workload"]
    assert len(workloads) == 3 * 2 * 2
    assert {i["site"] for i in workloads} == {"jakarta", "surabaya"}
    assert all(i["ready"] and i["pid"] for i in status["instances"])
    uids: dict[str, set[int]] = {}
    for inst in workloads:
        proc = psutil.Process(inst["pid"])
        assert proc.pid == os.getsid(proc.pid), "each instance runs in its own session"
        uids.setdefault(inst["service"], set()).add(proc.uids().real)
    if os.geteuid() == 0:  # unprivileged, and each service an identity of its own
        assert all(len(u) == 1 for u in uids.values()), uids
        owners = [next(iter(u)) for u in uids.values()]
        assert len(set(owners)) == 3 and all(61184 < uid < 65535 for uid in owners), uids
    seen: dict[str, set[str]] = {}
    with httpx.Client(base_url=running.front_door, trust_env=False, timeout=5) as client:
        for n in range(60):
            path = PATHS[n % 3]
            response = client.get(path)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["path"] == path
            seen.setdefault(path, set()).add(body["instance"])
            assert body["request_id"], "the gateway adds X-Request-Id"
            assert body["forwarded_for"].startswith("127.0.0.1"), body["forwarded_for"]
    assert all(len(instances) >= 2 for instances in seen.values()), seen


def test_killed_instance_is_restarted_and_no_request_fails(running: Platform) -> None:
    victim = running.instances(service="accounts", site="jakarta")[0]
    with Stream(running.front_door, PATHS, rate=150) as stream:
        stream.wait_sent(100)
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            now = next(i for i in running.instances(id=victim["id"]))
            return now if now["ready"] and now["pid"] != victim["pid"] else None

        after = wait_for("the killed instance to be restarted and ready", restarted, 30)
        stream.wait_sent(100)
    assert after["restarts"] == 1
    assert "SIGKILL" in after["last_exit"]
    assert stream.failures == [], stream.failures[:5]
    events = running.cli("status", "--json")  # the controller still answers
    assert events.returncode == 0


def test_front_door_keeps_serving_when_a_site_gateway_dies(running: Platform) -> None:
    gateway = running.instances(id="gateway@jakarta")[0]
    with Stream(running.front_door, PATHS, rate=150) as stream:
        stream.wait_sent(100)
        os.kill(gateway["pid"], signal.SIGKILL)
        wait_for(
            "the gateway to come back",
            lambda: (
                (g := running.instances(id="gateway@jakarta")[0])["ready"]
                and g["pid"] != gateway["pid"]
            ),
            30,
        )
        stream.wait_sent(100)
    assert stream.failures == [], stream.failures[:5]


def test_controller_restart_adopts_instances_without_restarting_them(running: Platform) -> None:
    before = {i["id"]: i["pid"] for i in running.status()["instances"]}
    controller = running.controller_pid()
    assert controller is not None
    with Stream(running.front_door, PATHS, rate=150) as stream:
        stream.wait_sent(50)
        os.kill(controller, signal.SIGKILL)
        wait_for(
            "the controller to die",
            lambda: (
                not psutil.pid_exists(controller)
                or psutil.Process(controller).status() == psutil.STATUS_ZOMBIE
            ),
            10,
        )
        stream.wait_sent(100)  # the platform serves with no controller at all
        running.cli("up", "--timeout", "30")
        stream.wait_sent(50)
    after = running.status()
    assert running.controller_pid() not in (None, controller)
    assert {i["id"]: i["pid"] for i in after["instances"]} == before
    assert all(i["adopted"] for i in after["instances"])
    assert after["converged"] is True
    assert stream.failures == [], stream.failures[:5]


def test_scaling_down_drains_first_and_drops_nothing(running: Platform) -> None:
    with Stream(running.front_door, PATHS, rate=150, post_every=2) as stream:
        stream.wait_sent(100)
        running.cli("scale", "accounts", "1")
        wait_for(
            "accounts to have one instance per site",
            lambda: len(running.instances(service="accounts")) == 2,
            30,
        )
        stream.wait_sent(100)
    assert stream.failures == [], stream.failures[:5]
    events = json.loads(running.cli("events", "--json", "--kind", "stopped").stdout)
    assert {e["subject"] for e in events} == {"accounts-jakarta-2", "accounts-surabaya-2"}
