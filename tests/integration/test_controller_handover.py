"""A platform that ran with one controller hands over to a controller in every site when
its spec gains a database (issue 14, item 3): ``up`` stops the only controller by its pid,
starts etcd and the three site controllers, moves ``state.db`` onto etcd once, and the
leader adopts the running workloads instead of restarting them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psutil
from ruamel.yaml import YAML
from tests.integration.dbcluster import db_spec
from tests.support import Platform, echo_service, wait_for, write_spec


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_one_controller_hands_over_to_one_in_every_site_keeping_state_and_processes(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    data = {
        "platform": "handover",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [echo_service("accounts", 8000, replicas=1)],
    }
    platform = make_platform(data, folder=echo_folder)
    platform.cli("up", "--timeout", "60")
    lone = platform.controller_pid()
    assert lone is not None and (platform.state_dir / "controller.json").exists()
    platform.cli("scale", "accounts", "2")  # an audit entry and drift, kept in state.db
    wait_for(
        "two accounts instances per site ready",
        lambda: len(platform.instances(service="accounts", desired=True, ready=True)) == 4,
        60,
    )
    running = {i["id"]: i["pid"] for i in platform.instances(service="accounts", desired=True)}
    assert platform.status()["drift"], "scale set no drift"
    audit_before = json.loads(platform.cli("audit", "--json").stdout)
    assert any(e["action"] == "scale" for e in audit_before), audit_before

    # The same platform's spec (its private ports and subnets) with a database added.
    spec = dict(YAML().load(platform.spec_path.read_text()))
    spec["databases"] = db_spec("asynchronous")["databases"]
    write_spec(platform.spec_path, spec)
    out = platform.cli("up", "--timeout", "120", timeout=240)
    assert f"stopping the platform's only controller (pid {lone})" in out.stderr, out.stderr
    assert "moved the controller's state to etcd" in out.stderr, out.stderr
    assert _gone(lone)
    assert not (platform.state_dir / "state.db").exists()
    assert (platform.state_dir / "state.db.migrated").exists()

    leader = platform.leader()
    assert leader is not None, "no site controller leads"
    controllers = [i for i in platform.status()["instances"] if i["kind"] == "controller"]
    assert sorted(c["site"] for c in controllers) == ["jakarta", "surabaya", "witness"]
    assert all(c["ready"] for c in controllers), controllers
    # The workloads the new spec still wants were adopted, not restarted. The spec changed,
    # so `up` applied it, and an apply ends the drift `scale` set (as documented).
    after = {i["id"]: i["pid"] for i in platform.instances(service="accounts", desired=True)}
    assert sorted(after) == ["accounts-jakarta-1", "accounts-surabaya-1"]
    assert after == {ident: pid for ident, pid in running.items() if ident in after}
    assert platform.status()["drift"] == []
    # What the only controller recorded is read from etcd now, through whichever leads.
    audit_after = json.loads(platform.cli("audit", "--json").stdout)
    kept = {(e["at"], e["actor"], e["action"]) for e in audit_after}
    assert {(e["at"], e["actor"], e["action"]) for e in audit_before} <= kept, audit_after
