"""Day-two operations on a running platform: logs, audit, API security, idempotent up, health."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from tests.support import Platform, wait_for


def test_up_twice_is_harmless(running_small: Platform) -> None:
    before = {i["id"]: i["pid"] for i in running_small.status()["instances"]}
    again = running_small.cli("up")
    assert "is up" in again.stdout
    assert "the spec is applied as it is" in again.stderr
    assert {i["id"]: i["pid"] for i in running_small.status()["instances"]} == before
    # `up` of the same spec keeps drift (it does not re-apply); `apply` ends it.
    running_small.cli("scale", "accounts", "2", "--site", "jakarta")
    drift = [{"service": "accounts", "site": "jakarta", "replicas": 2}]
    running_small.cli("up")
    assert running_small.status()["drift"] == drift
    running_small.cli("apply")
    assert running_small.status()["drift"] == []


def test_logs_show_every_instance_and_follow_new_lines(running_small: Platform) -> None:
    result = running_small.cli("logs", "accounts")
    assert "[accounts-jakarta-1]" in result.stdout and "[accounts-surabaya-1]" in result.stdout
    assert "echo listening on" in result.stdout
    only = running_small.cli("logs", "accounts", "--site", "surabaya").stdout
    assert "[accounts-jakarta-1]" not in only and "[accounts-surabaya-1]" in only

    cmd = [sys.executable, "-m", "alwayson.cli.main", "logs", "accounts", "--site", "jakarta"]
    cmd += ["--follow", "--tail", "0", "-f", str(running_small.spec_path)]
    follower = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in follower.stdout or []], daemon=True
    )
    reader.start()
    try:
        log = running_small.state_dir / "logs" / "jakarta" / "accounts-jakarta-1.log"
        deadline = time.monotonic() + 20
        got = ""
        n = 0
        # The follower may subscribe after any given write, so keep writing until one shows.
        while not got and time.monotonic() < deadline:
            n += 1
            with log.open("a") as out:
                out.write(f"line {n} written after follow started\n")
            with contextlib.suppress(queue.Empty):
                got = lines.get(timeout=0.2)
        assert got.startswith("[accounts-jakarta-1] line "), got
        assert got.strip().endswith("written after follow started")
    finally:
        follower.kill()
        follower.wait(timeout=10)

    unknown = running_small.cli("logs", "nope", check=False)
    assert unknown.returncode == 1 and "unknown service 'nope'" in unknown.stderr


def test_every_change_is_audited_with_its_token_and_command(running_small: Platform) -> None:
    running_small.cli("scale", "accounts", "2", "--site", "jakarta")
    entries = json.loads(running_small.cli("audit", "--json").stdout)
    assert [(e["actor"], e["action"]) for e in entries][:2] == [
        ("owner (scale)", "scale"),
        ("owner (up)", "apply"),
    ]
    assert entries[0]["detail"] == {"service": "accounts", "replicas": 2, "site": "jakarta"}
    assert any("service accounts" in c for c in entries[1]["detail"]["changes"])


def test_api_needs_the_token_and_publishes_openapi(running_small: Platform) -> None:
    token_file = running_small.state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    base = f"http://{running_small.api}"
    with httpx.Client(base_url=base, trust_env=False, timeout=5) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/status").status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert client.get("/api/v1/status", headers=bad).status_code == 401
        good = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert client.get("/api/v1/status", headers=good).json()["converged"] is True
        spec = client.get("/openapi.json").json()
        assert "/api/v1/apply" in spec["paths"] and "/api/v1/scale" in spec["paths"]
    host = running_small.api.split(":")[0]
    assert host.startswith("127."), "the API binds loopback by default"


def test_failing_health_takes_an_instance_out_then_restarts_it(
    running_small: Platform, echo_folder: Path
) -> None:
    victim = running_small.instances(id="accounts-jakarta-1")[0]
    sick = echo_folder / "sick-accounts-jakarta-1"
    sick.write_text("")
    os.chmod(sick, 0o644)
    try:
        wait_for(
            "the sick instance to leave rotation",
            lambda: not running_small.instances(id="accounts-jakarta-1")[0]["ready"],
            20,
        )
        with httpx.Client(base_url=running_small.front_door, trust_env=False, timeout=5) as c:
            served = {c.get("/accounts/x").json()["instance"] for _ in range(20)}
        assert served == {"accounts-surabaya-1"}
        restarted = wait_for(
            "liveness to restart it (a new pid)",
            lambda: (
                (i := running_small.instances(id="accounts-jakarta-1")[0])["pid"]
                not in (None, victim["pid"])
                and i
            ),
            30,
        )
        assert restarted["restarts"] >= 1
        assert restarted["pid"] != victim["pid"]
        assert "liveness failed" in restarted["last_exit"]
    finally:
        sick.unlink()
    wait_for(
        "the restarted instance to be ready again",
        lambda: running_small.instances(id="accounts-jakarta-1")[0]["ready"],
        30,
    )


def test_max_body_from_the_spec_limits_request_bodies(running_small: Platform) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(running_small.spec_path.read_text())
    data["services"][0]["max_body"] = "1KiB"
    with running_small.spec_path.open("w") as out:
        yaml.dump(data, out)
    changes = running_small.cli("plan").stdout
    assert "max_body None → 1024" in changes
    running_small.cli("apply", "--timeout", "30")
    with httpx.Client(base_url=running_small.front_door, trust_env=False, timeout=5) as client:
        assert client.post("/accounts/x", content=b"x" * 1000).status_code == 200
        too_big = client.post("/accounts/x", content=b"x" * 4096)
    assert too_big.status_code == 413
    assert too_big.json()["request_id"]
