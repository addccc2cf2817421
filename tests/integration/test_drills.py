"""Drills for real: the sample bank on a synchronous database across two sites, under
registration load through the front door, losing its primary site (the default suite's
short site-loss drill), and the bad input a drill must refuse or survive.

Everything a drill starts is recorded under the state directory (the drill process's
``runner.json`` included) and stopped by pid by ``make_platform``, even on failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.support import Platform, wait_for


def drill(platform: Platform, *args: str, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    out = platform.cli("drill", "run", *args, "--json", check=False, timeout=timeout)
    try:
        result = json.loads(out.stdout)
    except ValueError:
        result = {}
    return out.returncode, result, out.stderr


def nothing_left_behind(platform: Platform, result: dict[str, Any]) -> None:
    """Every fault undone: no cut or slowed link, no held site, no stopped process."""
    for fault in result["faults"]:
        assert fault["undone_at"] is not None, fault
        if fault.get("pid"):
            with pytest.raises(psutil.NoSuchProcess):
                proc = psutil.Process(fault["pid"])
                if abs(proc.create_time() - fault["create_time"]) < 0.05:
                    assert proc.status() != psutil.STATUS_STOPPED, fault
                    raise psutil.NoSuchProcess(fault["pid"])  # alive and running is fine
                raise psutil.NoSuchProcess(fault["pid"])
    links = platform.state_dir / "data" / "partitions.json"
    if links.exists():
        state = json.loads(links.read_text())
        assert not state.get("cut") and not state.get("slow"), state
    status = json.loads(platform.cli("status", "--json").stdout)
    assert status["converged"], [i["id"] for i in status["instances"] if not i["ready"]]


def test_site_loss_drill_serves_from_the_other_site_and_fails_back(
    bank: Platform, tmp_path: Path
) -> None:
    report = tmp_path / "site-loss.html"
    code, result, stderr = drill(
        bank, "site-loss", "--rate", "15", "--duration", "12s", "--html", str(report)
    )
    summary = {k: result.get(k) for k in ("status", "reason", "measures", "objectives", "notes")}
    assert code == 0, (stderr, json.dumps(summary, indent=1, default=str))
    assert result["status"] == "passed"
    assert result["site"] == "jakarta" and result["target"] == "jakarta"
    m = result["measures"]
    print(
        f"site-loss drill: {m['requests']} requests, {m['failed_after_fault']} failed after the "
        f"fault, detect {m['detect_seconds']}, RTO {m['rto_seconds']:.2f} s, longest gap "
        f"{m['longest_gap_seconds']:.2f} s; writes {result['writes']['acknowledged']} "
        f"acknowledged, {result['writes']['lost_count']} lost"
    )
    assert m["rto_seconds"] is not None and m["rto_seconds"] <= 10.0
    assert m["detect_seconds"] is not None
    writes = result["writes"]
    assert writes["checked"] and writes["acknowledged"] > 50
    assert writes["lost"] == [] and writes["ledger"]["problems"] == []
    kinds = [mark["kind"] for mark in result["timeline"]]
    for kind in ("fault", "detected", "promoted", "recovered", "undone", "failback"):
        assert kind in kinds, kinds
    assert {o["name"]: o["passed"] for o in result["objectives"]} == {
        "rto": True,
        "acknowledged writes lost": True,
        "ledger problems": True,
        "platform whole after undo": True,
    }
    nothing_left_behind(bank, result)
    db = json.loads(bank.cli("db", "status", "--json").stdout)[0]
    assert db["lease"]["holder"] == "jakarta"  # failed back
    html = report.read_text()
    assert "site-loss" in html and "data:image/png" in html
    listed = json.loads(bank.cli("drill", "list", "--json").stdout)
    assert listed[0]["id"] == result["id"] and listed[0]["status"] == "passed"
    shown = json.loads(bank.cli("drill", "show", result["id"], "--json").stdout)
    assert shown["measures"] == result["measures"]


def test_witness_and_etcd_member_loss_drills_lose_no_request_and_keep_the_primary(
    bank: Platform, tmp_path: Path
) -> None:
    """Every process of the witness site (its etcd member, the controller beside it)
    stopped under registration load: the two workload sites' members are a quorum, so
    the primary keeps its lease; no request fails, no role changes, PostgreSQL is not
    restarted."""

    def settled() -> dict[str, Any] | None:
        found: dict[str, Any] = json.loads(bank.cli("db", "status", "--json").stdout)[0]
        roles = {r["site"]: (r.get("role"), r.get("pid")) for r in found["sites"]}
        ready = roles.get("jakarta", ("", None))[0] == "primary" and all(
            pid for _, pid in roles.values()
        )
        return found if ready else None

    before = wait_for("both sites' PostgreSQL reported", settled, timeout=60)
    pids = {r["site"]: r.get("pid") for r in before["sites"]}
    code, result, stderr = drill(
        bank,
        "witness-loss",
        "--rate",
        "15",
        "--duration",
        "20s",
        "--html",
        str(tmp_path / "w.html"),
    )
    summary = {k: result.get(k) for k in ("status", "reason", "measures", "objectives", "notes")}
    assert code == 0, (stderr, json.dumps(summary, indent=1, default=str))
    assert result["status"] == "passed", summary
    fault = result["faults"][0]
    assert fault["kind"] == "site-hang" and fault["site"] == "witness", fault
    stopped = {what for _, _, what in fault["processes"]}
    assert stopped == {"etcd@witness", "controller@witness"}, stopped
    m = result["measures"]
    print(
        f"witness-loss drill: {m['requests']} requests, {m['failed_after_fault']} failed after "
        f"the fault; writes {result['writes']['acknowledged']} acknowledged, "
        f"{result['writes']['lost_count']} lost"
    )
    assert m["failed_after_fault"] == 0 and m["requests"] > 200
    assert result["writes"]["lost"] == []
    assert result["primaries"]["max_writable"] == 1 and result["primaries"]["samples"] > 10
    after = json.loads(bank.cli("db", "status", "--json").stdout)[0]
    assert after["lease"]["holder"] == "jakarta"
    assert after["lease"]["epoch"] == before["lease"]["epoch"]  # no role change
    assert {r["site"]: r.get("pid") for r in after["sites"]} == pids  # no PostgreSQL restart
    nothing_left_behind(bank, result)

    # On the same bank: one etcd member killed (the primary site's); the other two keep
    # the quorum and the controller restarts it on its data.
    code, result, stderr = drill(bank, "etcd-member-loss", "--rate", "15", "--duration", "6s")
    summary = {k: result.get(k) for k in ("status", "reason", "measures", "objectives", "notes")}
    assert code == 0 and result["status"] == "passed", (stderr, summary)
    assert result["faults"][0]["target"] == "etcd@jakarta"
    m = result["measures"]
    print(f"etcd-member-loss drill: {m['requests']} requests, {m['failed_after_fault']} failed")
    assert m["failed_after_fault"] == 0 and result["primaries"]["max_writable"] == 1
    final = json.loads(bank.cli("db", "status", "--json").stdout)[0]
    assert final["lease"]["epoch"] == before["lease"]["epoch"]
    nothing_left_behind(bank, result)


# ------------------------------------------------------------------ the full matrix (soak)


def _back(result: dict[str, Any]) -> str:
    """Seconds from the undo until the databases replicated again (a rejoin's time)."""
    marks = {m["kind"]: m["at"] for m in result.get("timeline") or [] if "at" in m}
    if "undone" in marks and "replicating" in marks:
        return f" replicating_again={marks['replicating'] - marks['undone']:.1f}s"
    return ""


MATRIX = (
    "instance-kill",
    "instance-hang",
    "gateway-kill",
    "db-primary-kill",
    "site-partition",
    "link-latency",
    "controller-kill",
    "etcd-member-loss",
    "witness-loss",
    "site-loss",
)


@pytest.mark.soak
def test_every_scenario_on_the_bank(bank: Platform, tmp_path: Path) -> None:
    """The whole matrix, one drill after another on one bank (about 10 minutes): each is
    judged against its objectives, and leaves nothing behind for the next."""
    verdicts = {}
    for name in MATRIX:
        code, result, stderr = drill(
            bank, name, "--rate", "15", "--html", str(tmp_path / f"{name}.html")
        )
        m = result.get("measures") or {}
        w = result.get("writes") or {}
        p = result.get("primaries") or {}
        line = (
            f"{name}: {result.get('status')} rto={m.get('rto_seconds')} "
            f"detect={m.get('detect_seconds')} failed={m.get('failed_after_fault')}/"
            f"{m.get('requests')} gap={m.get('longest_gap_seconds')} lost={w.get('lost_count')} "
            f"unacked_stored={w.get('unacknowledged_stored_count')} "
            f"ledger={len((w.get('ledger') or {}).get('problems') or [])} "
            f"max_writable={p.get('max_writable')} reason={result.get('reason')}"
            f"{_back(result)}"
        )
        print(line, flush=True)
        verdicts[name] = (code, result.get("status"), line, stderr[-500:])
        if result:
            nothing_left_behind(bank, result)
    failed = {k: v for k, v in verdicts.items() if v[0] != 0}
    assert not failed, json.dumps(failed, indent=1)
