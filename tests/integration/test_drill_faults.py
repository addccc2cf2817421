"""Every fault injected and undone on a real platform (echo services in two sites), quick
drills that need no database, and the bad input a drill must refuse or survive.

The database faults (primary kill, partition, link latency) run as full drills on the
sample bank in ``test_drills.py``; the partition and slowness faults are also injected
and undone here, through the drill's own fault code, against real gateways.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.support import Platform, echo_service, three_service_spec, wait_for

from alwayson.drills.faults import Fault, Journal, inject, undo
from alwayson.util.sitelinks import read_partitions


@pytest.fixture
def echo(make_platform: Callable[..., Platform], echo_folder: Path) -> Platform:
    data = three_service_spec()
    data["services"] = [echo_service("accounts", 8000, replicas=2)]
    data["drills"] = {"settle": "1s"}
    platform = make_platform(data, folder=echo_folder)
    platform.cli("up", "--timeout", "60")
    return platform


def run(platform: Platform, *args: str, timeout: float = 180) -> tuple[int, dict[str, Any], str]:
    out = platform.cli("drill", "run", *args, "--json", check=False, timeout=timeout)
    try:
        return out.returncode, json.loads(out.stdout), out.stderr
    except ValueError:
        return out.returncode, {}, out.stderr + out.stdout


def status(platform: Platform) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(platform.cli("status", "--json").stdout)
    return found


def converged(platform: Platform) -> bool:
    return bool(status(platform)["converged"])


def figures(result: dict[str, Any]) -> str:
    m = result.get("measures") or {}
    return (
        f"{result.get('scenario')}: {result.get('status')} ({result.get('reason')}); "
        f"{m.get('requests')} requests, {m.get('failed_after_fault')} failed after the fault, "
        f"detect {m.get('detect_seconds')}, RTO {m.get('rto_seconds')}, gap "
        f"{m.get('longest_gap_seconds')}; notes {result.get('notes')}"
    )


def test_instance_kill_drill_fails_no_request(echo: Platform) -> None:
    code, result, stderr = run(
        echo, "instance-kill", "--journey", "/accounts", "--rate", "40", "--duration", "3s"
    )
    print(figures(result))
    assert code == 0, (stderr, figures(result))
    (fault,) = result["faults"]
    assert fault["kind"] == "kill" and fault["target"].startswith("accounts-jakarta-")
    assert fault["undone_at"] is not None
    assert result["measures"]["failed_after_fault"] == 0
    assert not psutil.pid_exists(fault["pid"]) or (
        psutil.Process(fault["pid"]).create_time() != fault["create_time"]
    )
    assert converged(echo)


def test_instance_hang_is_continued_or_replaced_and_nothing_stays_stopped(echo: Platform) -> None:
    code, result, stderr = run(
        echo, "instance-hang", "--journey", "/accounts", "--rate", "20", "--duration", "4s"
    )
    print(figures(result))
    assert result.get("faults"), (code, stderr)
    (fault,) = result["faults"]
    assert fault["kind"] == "hang" and fault["undone_at"] is not None
    with pytest.raises(psutil.NoSuchProcess):
        proc = psutil.Process(fault["pid"])
        assert proc.status() != psutil.STATUS_STOPPED
        raise psutil.NoSuchProcess(fault["pid"])  # still there, and running: fine
    wait_for("every instance ready", lambda: converged(echo), timeout=60)


def test_gateway_kill_drill_serves_through_the_other_site(echo: Platform) -> None:
    code, result, stderr = run(
        echo, "gateway-kill", "--journey", "/accounts", "--rate", "40", "--duration", "3s"
    )
    print(figures(result))
    assert code == 0, (stderr, figures(result))
    assert result["faults"][0]["target"] == "gateway@jakarta"
    assert result["measures"]["rto_seconds"] is not None
    assert converged(echo)


def test_controller_kill_drill_keeps_serving_and_restarts_it(echo: Platform) -> None:
    before = echo.controller_pid()
    code, result, stderr = run(
        echo, "controller-kill", "--journey", "/accounts", "--rate", "40", "--duration", "3s"
    )
    print(figures(result))
    assert code == 0, (stderr, figures(result))
    assert result["measures"]["failed_after_fault"] == 0
    after = echo.controller_pid()
    assert after is not None and after != before
    assert any(mark["kind"] == "detected" for mark in result["timeline"])
    listed = json.loads(echo.cli("drill", "list", "--json").stdout)
    assert listed[0]["id"] == result["id"] and listed[0]["status"] == "passed"


def test_site_loss_holds_the_site_down_and_restore_brings_it_back(echo: Platform) -> None:
    """The controller's half of a site loss: nothing of the site runs, nor restarts,
    until it is restored."""
    token = (echo.state_dir / "token").read_text().strip()
    api = httpx.Client(base_url=f"http://{echo.api}", headers={"Authorization": f"Bearer {token}"})
    pids = [i["pid"] for i in status(echo)["instances"] if i["site"] == "surabaya" and i["pid"]]
    assert len(pids) >= 4  # two instances, the gateway, the front door
    lost = api.post("/api/v1/sites/surabaya/lose", json={"drill": "test"}).json()
    assert {k["pid"] for k in lost["killed"]} >= set(pids)
    wait_for("surabaya's processes gone", lambda: not any(map(psutil.pid_exists, pids)))
    rows = status(echo)["instances"]
    assert not [i for i in rows if i["site"] == "surabaya" and i["desired"]]
    assert api.post("/api/v1/sites/jakarta/lose", json={}).status_code == 409  # the last one
    with httpx.Client() as client:  # the other site serves
        assert client.get(f"{echo.front_door}/accounts").status_code == 200
    api.post("/api/v1/sites/surabaya/restore", json={"drill": "test"}).raise_for_status()
    wait_for("surabaya whole again", lambda: converged(echo), timeout=60)
    api.close()


def test_partition_and_slowness_faults_are_journaled_and_undone(
    echo: Platform, tmp_path: Path
) -> None:
    links = echo.state_dir / "data" / "partitions.json"
    journal = Journal(tmp_path)

    class NoControl:
        async def lose_site(self, site: str, drill: str) -> dict[str, Any]:
            raise AssertionError

        restore_site = lose_site

        async def alive(self) -> bool:
            return True

    cut = Fault(
        "partition",
        "jakarta <-> surabaya",
        "t",
        pairs=[["jakarta", "surabaya"]],
        partitions_file=str(links),
    )
    slow = Fault(
        "slowness",
        "jakarta <-> witness",
        "t",
        pairs=[["jakarta", "witness"]],
        delay=0.05,
        partitions_file=str(links),
    )

    async def go() -> None:
        await inject(cut, journal, NoControl())
        await inject(slow, journal, NoControl())

    asyncio.run(go())
    assert [f.kind for f in Journal(tmp_path).pending()] == ["partition", "slowness"]
    pairs, slowed = read_partitions(links)
    assert [frozenset(p) for p in pairs] == [frozenset(("jakarta", "surabaya"))]
    assert slowed[0].delay == 0.05
    asyncio.run(undo(cut, NoControl(), journal))
    asyncio.run(undo(slow, NoControl(), journal))
    assert read_partitions(links) == ([], [])
    assert Journal(tmp_path).pending() == []


# ------------------------------------------------------------------------ bad input


def test_unknown_scenario_or_site_is_refused_with_the_list(echo: Platform) -> None:
    out = echo.cli("drill", "run", "meteor-strike", check=False)
    assert out.returncode == 2 and "site-loss" in out.stderr and "instance-kill" in out.stderr
    out = echo.cli("drill", "run", "instance-kill", "--site", "bandung", check=False)
    assert out.returncode == 2 and "bandung" in out.stderr and "jakarta" in out.stderr
    out = echo.cli("drill", "run", "db-primary-kill", check=False)
    assert out.returncode == 2 and "database" in out.stderr
    assert json.loads(echo.cli("drill", "list", "--json").stdout) == []


def test_a_drill_whose_target_fails_before_the_fault_stops_without_injecting(
    echo: Platform,
) -> None:
    code, result, _ = run(echo, "instance-kill", "--journey", "/no-such-route", "--rate", "20")
    assert code == 1
    assert result["status"] == "aborted"
    assert "before the fault" in result["reason"] and "no fault was injected" in result["reason"]
    assert result["faults"] == [] and result["fault_at"] is None
    assert result["objectives"] == []


def test_a_second_drill_is_refused_and_ctrl_c_undoes_and_reports(echo: Platform) -> None:
    cmd = [
        sys.executable,
        "-m",
        "alwayson.cli.main",
        "drill",
        "run",
        "instance-hang",
        "--journey",
        "/accounts",
        "--rate",
        "20",
        "--duration",
        "60s",
        "--json",
        "-f",
        str(echo.spec_path),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:

        def hung() -> bool:
            drills = json.loads(echo.cli("drill", "list", "--json").stdout)
            if not drills:
                return False
            shown = json.loads(echo.cli("drill", "show", drills[0]["id"], "--json").stdout)
            return (shown.get("progress") or {}).get("phase") == "fault"

        wait_for("the drill holding its fault", hung, timeout=60, every=0.2)
        second = echo.cli("drill", "run", "instance-kill", check=False)
        assert second.returncode == 2 and "one drill at a time" in second.stderr
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    result = json.loads(stdout)
    assert result["status"] == "aborted" and result["interrupted"]
    (fault,) = result["faults"]
    assert fault["undone_at"] is not None
    with pytest.raises(psutil.NoSuchProcess):
        p = psutil.Process(fault["pid"])
        assert p.status() != psutil.STATUS_STOPPED
        raise psutil.NoSuchProcess(fault["pid"])
    assert result["measures"]["requests"] > 0  # the partial figures are there


def test_a_drill_process_that_dies_has_its_faults_undone_by_the_controller(
    echo: Platform,
) -> None:
    """SIGKILL the drill process while an instance is stopped: the controller finds the
    drill gone without a result, continues the instance from the journal, and records the
    drill as aborted (with a report)."""
    token = (echo.state_dir / "token").read_text().strip()
    api = httpx.Client(base_url=f"http://{echo.api}", headers={"Authorization": f"Bearer {token}"})
    try:
        record = api.post(
            "/api/v1/drills",
            json={"scenario": "instance-hang", "journey": "/accounts", "duration": 60},
        ).json()
        ident = record["id"]

        def hung() -> dict[str, Any] | None:
            shown = api.get(f"/api/v1/drills/{ident}").json()
            return shown if (shown.get("progress") or {}).get("phase") == "fault" else None

        wait_for("the drill holding its fault", hung, timeout=60, every=0.2)
        (fault,) = json.loads((Path(record["run_dir"]) / "faults.json").read_text())
        assert psutil.Process(fault["pid"]).status() == psutil.STATUS_STOPPED
        runner = psutil.Process(record["pid"])
        assert abs(runner.create_time() - record["create_time"]) < 0.05
        runner.kill()  # by the pid the controller recorded

        def ended() -> dict[str, Any] | None:
            shown = api.get(f"/api/v1/drills/{ident}").json()
            return shown if shown["status"] != "running" else None

        shown = wait_for("the controller to notice", ended, timeout=30, every=0.2)
        assert shown["status"] == "aborted"
        assert "undid 1 fault" in shown["reason"], shown["reason"]
        with pytest.raises(psutil.NoSuchProcess):
            proc = psutil.Process(fault["pid"])
            assert proc.status() != psutil.STATUS_STOPPED
            raise psutil.NoSuchProcess(fault["pid"])
        assert api.get(f"/api/v1/drills/{ident}/report").status_code == 200
    finally:
        api.close()
