"""The README's demo flow, through the CLI as a user runs it, on a copy of the sample bank."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from ruamel.yaml import YAML
from tests.support import ROOT, Platform

SAMPLE = ROOT / "examples" / "digital-bank"


def test_sample_bank_demo_flow(make_platform: Callable[..., Platform], tmp_path: Path) -> None:
    folder = tmp_path / "my-bank"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
    data = YAML().load((SAMPLE / "alwayson.yaml").read_text())
    platform = make_platform(dict(data), folder=folder)
    services = len(data["services"])
    assert services >= 15

    started = time.monotonic()
    up = platform.cli("up", "--timeout", "90", timeout=180)
    took = time.monotonic() - started
    assert "is up" in up.stdout and platform.front_door in up.stdout
    print(f"sample bank up in {took:.1f}s")

    status = platform.status()
    assert status["converged"] is True
    workloads = [i for i in status["instances"] if i["kind"] == "workload"]
    assert len(workloads) == services * 2 * 2
    # gateway, front door, the site agent of the database, the site's etcd member and its
    # controller
    assert {s["name"]: s["ready"] for s in status["sites"]}["jakarta"] == services * 2 + 5

    customer = {
        "name": "Siti Rahma",
        "email": "siti@example.com",
        "id_number": "3174012304900001",
        "city": "jakarta",
    }
    with httpx.Client(base_url=platform.front_door, trust_env=False, timeout=10) as client:
        response = client.post("/onboarding/register", json=customer)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["customer_id"] and body["account_id"]
    hops = body["served_by"]
    assert len({name.rsplit("-", 2)[0] for name in hops.values()}) >= 3, hops

    platform.cli("scale", "accounts", "3", "--site", "jakarta")
    scaled = platform.instances(service="accounts", site="jakarta")
    assert len(scaled) == 3
    drift = platform.cli("plan").stdout
    assert "replicas in jakarta 3 → 2 (drift: set by `alwayson scale`)" in drift
    platform.cli("apply", "--timeout", "60")
    assert len(platform.instances(service="accounts", site="jakarta")) == 2
    assert "no changes" in platform.cli("plan").stdout

    pids = [pid for pid, _ in platform.recorded_processes()]
    # instances, 2 gateways, 2 front doors, 2 site agents, 3 etcd members, 3 controllers
    assert len(pids) == services * 4 + 4 + 2 + 3 + 3
    database = json.loads(platform.cli("db", "status", "--json").stdout)[0]
    roles = {s["site"]: s["role"] for s in database["sites"]}
    assert roles == {"jakarta": "primary", "surabaya": "standby"}
    postgres = [s["pid"] for s in database["sites"] if s.get("pid")]
    assert len(postgres) == 2
    platform.cli("down")
    assert [p for p in pids + postgres if _running(p)] == []
    assert list(platform.state_dir.glob("run/instances/*.json")) == []


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead orphan waits for init to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
