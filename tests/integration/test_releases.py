"""Releases on a real platform under load from wrk (a load generator not ours).

Rolling and blue-green of a good version drop nothing; a canary of a bad version rolls back
by itself; a canary of a good one is promoted through every step; a canary without traffic
never passes; a controller killed in the middle of a release continues it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML
from tests.support import ROOT, Platform, Wrk, echo_service, wait_for, write_spec

BANK = ROOT / "examples" / "digital-bank"

GETS = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/accounts/" .. n)
end
"""
FAST = {"interval": "1s", "min_requests": 20, "failure_limit": 2}


def _spec(**release: Any) -> dict[str, Any]:
    service = echo_service("accounts", 8000, replicas=2)
    service["release"] = {"analysis": FAST, **release}
    return {
        "platform": "release-test",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [service],
    }


@pytest.fixture
def bank_fx(make_platform: Callable[..., Platform], tmp_path: Path) -> Platform:
    """The sample bank's fx service alone (it calls no other service), 2 per site."""
    folder = tmp_path / "bank"
    folder.mkdir()
    shutil.copytree(BANK / "bank", folder / "bank")
    service = {
        "name": "fx",
        "version": "1.0.0",
        "run": "python -m bank.fx",
        "port": 8011,
        "replicas": 2,
        "health": {"http": "/healthz", "interval": "500ms", "timeout": "400ms"},
        "routes": [{"path": "/fx"}],
        "release": {"analysis": FAST},
    }
    data = _spec()
    data["services"] = [service]
    running = make_platform(data, folder=folder)
    running.cli("up", "--timeout", "60")
    return running


@pytest.fixture
def platform(make_platform: Callable[..., Platform], echo_folder: Path) -> Platform:
    running = make_platform(_spec(), folder=echo_folder)
    running.cli("up", "--timeout", "60")
    return running


FX_RATES = """
request = function()
  return wrk.format("GET", "/fx/rates")
end
"""


def _release(platform: Platform, service: str = "accounts") -> dict[str, Any]:
    rows = json.loads(platform.cli("release", "status", service, "--json").stdout)
    assert rows, "no release"
    return dict(rows[-1])


def _wait_end(
    platform: Platform, timeout: float = 120, service: str = "accounts"
) -> dict[str, Any]:
    wait_for(
        "the release to end",
        lambda: _release(platform, service)["phase"] in ("succeeded", "rolled-back"),
        timeout,
    )
    return _release(platform, service)


def _served(platform: Platform) -> int:
    """Requests the site gateways have answered so far (from their metrics)."""
    total = 0
    for gateway in platform.instances(kind="gateway"):
        text = httpx.get(f"http://{gateway['address']}/metrics", trust_env=False).text
        for family in text_string_to_metric_families(text):
            if family.name == "alwayson_gateway_requests":
                total += int(sum(sample.value for sample in family.samples))
    return total


def _wait_served(platform: Platform, count: int = 300) -> None:
    """Until the load has reached the gateways (wrk says nothing while it runs)."""
    target = _served(platform) + count
    wait_for(f"{count} more requests through the gateways", lambda: _served(platform) >= target, 30)


def _versions(platform: Platform, service: str = "accounts") -> dict[str, int]:
    out: dict[str, int] = {}
    for inst in platform.instances(service=service, desired=True):
        out[inst["version"]] = out.get(inst["version"], 0) + 1
    return out


def _deploy_under_load(
    platform: Platform,
    tmp_path: Path,
    *args: str,
    timeout: float = 120,
    service: str = "accounts",
    script: str = GETS,
) -> tuple[dict[str, Any], Any]:
    wrk = Wrk(platform.front_door, script, tmp_path, seconds=int(timeout) + 30)
    try:
        _wait_served(platform)  # load before the release starts
        platform.cli("deploy", service, *args)
        release = _wait_end(platform, timeout, service)
        _wait_served(platform)  # and after it ends
        result = wrk.stop()
    finally:
        wrk.kill()
    print(
        f"\n[release] {args}: {release['phase']} in "
        f"{release['ended_at'] - release['started_at']:.1f}s; wrk sent {result.requests}, "
        f"failed {result.failed}; totals {release['totals']}"
    )
    return release, result


def test_rolling_release_of_a_good_version_drops_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    release, load = _deploy_under_load(
        platform, tmp_path, "--version", "2.0.0", "--strategy", "rolling"
    )
    assert release["phase"] == "succeeded", release["message"]
    assert load.failed == 0, load.output
    assert load.requests > 1000, load.output
    assert _versions(platform) == {"2.0.0": 4}
    names = [s["name"] for s in release["stages"]]
    assert names[0].startswith("surabaya"), names  # the secondary site goes first
    assert any(n.startswith("analysis after surabaya") for n in names), names
    assert release["totals"]["requests_by_version"].get("2.0.0", 0) > 0
    assert release["totals"]["failed"] == 0
    history = json.loads(platform.cli("release", "history", "accounts", "--json").stdout)
    assert [h["phase"] for h in history] == ["succeeded"]
    # The version is drift now: `plan` says so, and that apply would release 1.0.0 back.
    drift = platform.cli("plan").stdout
    assert "version '2.0.0' → '1.0.0' (drift: set by `alwayson deploy`)" in drift, drift


def test_blue_green_previews_then_switches_without_dropping(
    platform: Platform, tmp_path: Path
) -> None:
    wrk = Wrk(platform.front_door, GETS, tmp_path, seconds=150)
    try:
        platform.cli(
            "deploy",
            "accounts",
            "--version",
            "2.0.0",
            "--strategy",
            "blue-green",
            "--scale-down-delay",
            "3s",
            "--settings-json",
            '{"blue_green": {"auto_promote": false}}',
        )
        wait_for("the preview to pause", lambda: _release(platform)["phase"] == "paused", 60)
        with httpx.Client(base_url=platform.front_door, trust_env=False) as client:
            plain = {client.get("/accounts/x").json()["version"] for _ in range(20)}
            preview = {
                client.get("/accounts/x", headers={"X-Alwayson-Preview": "1"}).json()["version"]
                for _ in range(20)
            }
        assert plain == {"1.0.0"} and preview == {"2.0.0"}
        platform.cli("release", "promote", "accounts")
        release = _wait_end(platform)
        _wait_served(platform)
        load = wrk.stop()
    finally:
        wrk.kill()
    print(f"\n[release] blue-green: wrk sent {load.requests}, failed {load.failed}")
    assert release["phase"] == "succeeded", release["message"]
    assert load.failed == 0, load.output
    assert _versions(platform) == {"2.0.0": 4}


def _bad_canary(platform: Platform, tmp_path: Path, run: str) -> dict[str, Any]:
    release, load = _deploy_under_load(
        platform,
        tmp_path,
        "--version",
        "1.1.0-bad",
        "--run",
        run,
        "--strategy",
        "canary",
        "--steps",
        "20,50,100",
        "--pause",
        "10s",
        service="fx",
        script=FX_RATES,
    )
    assert release["phase"] == "rolled-back", release["message"]
    assert _versions(platform, "fx") == {"1.0.0": 4}
    assert release["rollback_seconds"] is not None and release["rollback_seconds"] <= 10
    # Only the canary's share can fail, and only until the rollback.
    assert load.failed <= release["totals"]["failed"] + 10, load.output
    return release


def test_canary_of_a_version_that_fails_rolls_back_with_the_figures(
    bank_fx: Platform, tmp_path: Path
) -> None:
    release = _bad_canary(bank_fx, tmp_path, "python -m bank.fx --fail-rate 0.3")
    failed = [d for d in release["decisions"] if d["outcome"] == "fail"]
    assert failed and "success rate" in failed[0]["reasons"][0], release["decisions"]
    assert failed[0]["figures"]["candidate_errors"] > 0


def test_canary_of_a_slow_version_rolls_back(bank_fx: Platform, tmp_path: Path) -> None:
    release = _bad_canary(bank_fx, tmp_path, "python -m bank.fx --delay 0.3")
    failed = [d for d in release["decisions"] if d["outcome"] == "fail"]
    assert failed and "p99" in " ".join(failed[0]["reasons"]), release["decisions"]


def test_canary_checks_are_promql_over_what_the_observe_loop_scrapes(
    bank_fx: Platform, tmp_path: Path
) -> None:
    """A good version by the gateways' figures, but one of its checks (PromQL on the
    candidate's own metrics, as the observe loop scraped them) cannot hold: it rolls back
    on that check, while the check that holds is shown passing."""
    checks = [
        'sum(rate(bank_requests_total{code=~"5.."}[10s])) < 1',
        "sum(rate(bank_requests_total[10s])) > 100000",
    ]
    settings = {"analysis": {**FAST, "checks": checks}}
    release, _ = _deploy_under_load(
        bank_fx,
        tmp_path,
        "--version",
        "1.4.0",
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--pause",
        "10s",
        "--settings-json",
        json.dumps(settings),
        service="fx",
        script=FX_RATES,
    )
    assert release["phase"] == "rolled-back", release["message"]
    failed = [d for d in release["decisions"] if d["outcome"] == "fail"]
    assert failed, release["decisions"]
    reasons = " ".join(failed[0]["reasons"])
    assert f"check failed: {checks[1]}" in reasons, reasons
    assert "success rate" not in reasons and checks[0] not in reasons, reasons
    judged = {c["check"]: c for c in failed[0]["figures"]["checks"]}
    assert judged[checks[0]]["ok"] is True
    assert judged[checks[1]]["ok"] is False and 0 < judged[checks[1]]["value"] < 100000
    assert _versions(bank_fx, "fx") == {"1.0.0": 4}


def test_canary_of_a_good_version_is_promoted_through_every_step(
    platform: Platform, tmp_path: Path
) -> None:
    release, load = _deploy_under_load(
        platform,
        tmp_path,
        "--version",
        "1.2.0",
        "--strategy",
        "canary",
        "--steps",
        "10,50,100",
        "--pause",
        "3s",
    )
    assert release["phase"] == "succeeded", release["message"]
    assert load.failed == 0, load.output
    done = [h["name"] for h in release["history"] if h["outcome"] == "done"]
    assert done[:3] == ["canary 10%", "canary 50%", "canary 100%"], done
    passed = {d["stage"] for d in release["decisions"] if d["outcome"] == "pass"}
    assert {"canary 10%", "canary 50%", "canary 100%"} <= passed


def test_canary_without_traffic_does_not_pass(platform: Platform) -> None:
    platform.cli(
        "deploy",
        "accounts",
        "--version",
        "1.3.0",
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--pause",
        "1s",
        "--settings-json",
        '{"canary": {"no_traffic_timeout": "3s"}}',
    )
    release = _wait_end(platform, 60)
    assert release["phase"] == "rolled-back"
    assert "fewer than min_requests" in release["message"], release["message"]
    assert _versions(platform) == {"1.0.0": 4}


def test_controller_killed_mid_release_continues_it(platform: Platform, tmp_path: Path) -> None:
    wrk = Wrk(platform.front_door, GETS, tmp_path, seconds=150)
    try:
        platform.cli(
            "deploy",
            "accounts",
            "--version",
            "2.0.0",
            "--strategy",
            "canary",
            "--steps",
            "25,100",
            "--pause",
            "4s",
        )
        wait_for(
            "the canary step to settle",
            lambda: _release(platform)["history"][-1].get("settled_at") is not None,
            60,
        )
        before = _release(platform)
        pid = platform.controller_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for("the controller to die", lambda: not _alive(pid), 10)
        platform.cli("up", "--timeout", "60")
        release = _wait_end(platform)
        _wait_served(platform)
        load = wrk.stop()
    finally:
        wrk.kill()
    assert release["phase"] == "succeeded", release["message"]
    assert load.failed == 0, load.output
    names = [h["name"] for h in release["history"]]
    assert names == [s["name"] for s in release["stages"]], names  # none repeated or skipped
    assert release["id"] == before["id"]
    assert _versions(platform) == {"2.0.0": 4}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bad_release_input_changes_nothing(platform: Platform) -> None:
    unknown = platform.cli("deploy", "nope", "--version", "2", check=False)
    assert unknown.returncode == 1 and "unknown service 'nope'" in unknown.stderr
    missing = platform.cli(
        "deploy", "accounts", "--version", "2", "--run", "./nothere", check=False
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    same = platform.cli("deploy", "accounts", "--version", "1.0.0", check=False)
    assert same.returncode == 1 and "nothing to release" in same.stderr
    nothing = platform.cli("release", "promote", "accounts", check=False)
    assert nothing.returncode == 1 and "no release of accounts is running" in nothing.stderr
    platform.cli(
        "deploy",
        "accounts",
        "--version",
        "2.0.0",
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--settings-json",
        '{"canary": {"steps": [{"weight": 50, "pause": "manual"}, 100]}}',
    )
    again = platform.cli("deploy", "accounts", "--version", "3.0.0", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    assert "release 1 of accounts" in again.stderr
    scaled = platform.cli("scale", "accounts", "3", check=False)
    assert scaled.returncode == 1 and "is being released" in scaled.stderr
    platform.cli("release", "abort", "accounts")
    release = _wait_end(platform, 60)
    assert release["phase"] == "rolled-back" and "aborted" in release["message"]
    assert _versions(platform) == {"1.0.0": 4}


def test_apply_of_a_new_version_in_the_spec_starts_its_release(
    platform: Platform, tmp_path: Path
) -> None:
    data = YAML().load(platform.spec_path.read_text())
    data["services"][0]["version"] = "2.0.0"
    data["services"][0]["release"]["strategy"] = "canary"
    data["services"][0]["release"]["canary"] = {"steps": [50, 100], "pause": "1s"}
    write_spec(platform.spec_path, data)
    assert "version '1.0.0' → '2.0.0'" in platform.cli("plan").stdout
    wrk = Wrk(platform.front_door, GETS, tmp_path, seconds=120)
    try:
        platform.cli("apply")
        release = _wait_end(platform, 90)
        load = wrk.stop()
    finally:
        wrk.kill()
    assert release["phase"] == "succeeded", release["message"]
    assert release["strategy"] == "canary" and release["actor"] == "owner (apply)"
    assert load.failed == 0, load.output
    assert _versions(platform) == {"2.0.0": 4}
    assert "no changes" in platform.cli("plan").stdout.lower()


def test_upgrade_gateway_rolls_site_by_site_without_dropping(
    platform: Platform, tmp_path: Path
) -> None:
    before = {i["id"]: i["pid"] for i in platform.instances(kind="gateway")}
    wrk = Wrk(platform.front_door, GETS, tmp_path, seconds=120)
    try:
        _wait_served(platform)
        result = json.loads(platform.cli("upgrade", "gateway", "--json").stdout)
        _wait_served(platform)
        load = wrk.stop()
    finally:
        wrk.kill()
    print(f"\n[release] upgrade gateway: wrk sent {load.requests}, failed {load.failed}")
    assert [r["id"] for r in result["replaced"]] == [
        "gateway@surabaya",
        "frontdoor@surabaya",
        "gateway@jakarta",
        "frontdoor@jakarta",
    ]
    assert load.failed == 0, load.output
    assert load.requests > 1000
    after = {i["id"]: i["pid"] for i in platform.instances(kind="gateway")}
    assert all(after[k] != v for k, v in before.items())


def test_a_new_instance_that_fails_stops_the_release(platform: Platform) -> None:
    platform.cli(
        "deploy",
        "accounts",
        "--version",
        "2.0.0",
        "--run",
        "python echo.py --exit 3",
        "--strategy",
        "rolling",
    )
    release = _wait_end(platform, 60)
    assert release["phase"] == "rolled-back", release["message"]
    assert "a new instance failed: accounts-surabaya-101" in release["message"]
    assert "exit" in release["message"]
    assert _versions(platform) == {"1.0.0": 4}
