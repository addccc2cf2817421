"""``examples/asgi-unchanged`` for real: uvicorn, run by its own command line with no
wrapper (``uvicorn --host $HOST --port $PORT app:app``), serves through the front door,
is released to a new version whose run line uses ``${NAME}``, survives an instance-kill
drill, and goes down.

Ports and subnets are private to this test (``make_platform``); everything it starts is
stopped by ``alwayson down`` and then by pid, even when it fails.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from ruamel.yaml import YAML
from tests.support import ROOT, Platform, Stream, wait_for

EXAMPLE = ROOT / "examples" / "asgi-unchanged"
FAST = {"interval": "1s", "min_requests": 20, "failure_limit": 2}
NEW_RUN = "uvicorn --host ${HOST} --port ${PORT} --no-access-log app:app"


@pytest.fixture
def asgi(make_platform: Callable[..., Platform], tmp_path: Path) -> Platform:
    """The example as shipped, on this test's own ports and subnets, up and ready."""
    folder = tmp_path / "asgi-unchanged"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
    data: dict[str, Any] = YAML(typ="safe").load((folder / "alwayson.yaml").read_text())
    assert data["services"][0]["run"] == "uvicorn --host $HOST --port $PORT app:app"
    data["services"][0]["release"] = {"analysis": FAST}
    data["drills"] = {"settle": "1s"}
    platform = make_platform(data, folder=folder)
    platform.cli("up", "--timeout", "60")
    return platform


def _hello(platform: Platform) -> dict[str, Any]:
    response = httpx.get(f"{platform.front_door}/", timeout=5.0, trust_env=False)
    response.raise_for_status()
    return dict(response.json())


def _release(platform: Platform) -> dict[str, Any]:
    rows = json.loads(platform.cli("release", "status", "hello", "--json").stdout)
    assert rows, "no release"
    return dict(rows[-1])


def _versions(platform: Platform) -> dict[str, int]:
    out: dict[str, int] = {}
    for inst in platform.instances(service="hello", desired=True):
        out[inst["version"]] = out.get(inst["version"], 0) + 1
    return out


def _argv_has(inst: dict[str, Any], *words: str) -> bool:
    argv = psutil.Process(int(inst["pid"])).cmdline()
    return any(argv[i : i + len(words)] == list(words) for i in range(len(argv)))


def test_uvicorn_runs_unchanged_releases_and_survives_an_instance_kill(
    asgi: Platform,
) -> None:
    # Every instance is uvicorn itself, told its own address by the run line.
    instances = asgi.instances(service="hello", desired=True)
    assert len(instances) == 4 and all(i["ready"] for i in instances), instances
    for inst in instances:
        host, port = inst["address"].rsplit(":", 1)
        assert _argv_has(inst, "--host", host, "--port", port, "app:app"), inst
        assert psutil.Process(int(inst["pid"])).cmdline()[1].endswith("/uvicorn"), inst

    first = _hello(asgi)
    assert first["server"] == "uvicorn" and first["version"] == "1.0.0", first
    assert first["instance"].startswith("hello-"), first
    healthz = httpx.get(f"{asgi.front_door}/healthz", timeout=5.0, trust_env=False)
    assert (healthz.status_code, healthz.text) == (200, "ok\n")

    # A typo in a new run line is refused before anything changes.
    refused = asgi.cli(
        "deploy",
        "hello",
        "--version",
        "1.0.1",
        "--run",
        "uvicorn --port $PROT app:app",
        check=False,
    )
    assert refused.returncode != 0
    assert "$PROT is not set for this service" in refused.stdout + refused.stderr, refused
    assert _versions(asgi) == {"1.0.0": 4}

    # A rolling release to 1.1.0, its run line using ${NAME}, under steady load.
    with Stream(asgi.front_door, ["/"], rate=50) as load:
        load.wait_sent(50)
        asgi.cli("deploy", "hello", "--version", "1.1.0", "--run", NEW_RUN)
        wait_for(
            "the release to end",
            lambda: _release(asgi)["phase"] in ("succeeded", "rolled-back"),
            timeout=180,
        )
        load.wait_sent(50)
    release = _release(asgi)
    print(
        f"\n[asgi-unchanged] release {release['phase']} in "
        f"{release['ended_at'] - release['started_at']:.1f}s; {load.sent} requests sent, "
        f"{len(load.failures)} failed: {load.failures[:3]}"
    )
    assert release["phase"] == "succeeded", release["message"]
    assert load.failures == [], load.failures[:5]
    wait_for("only 1.1.0 desired", lambda: _versions(asgi) == {"1.1.0": 4}, timeout=60)
    assert _hello(asgi)["version"] == "1.1.0"
    for inst in asgi.instances(service="hello", desired=True):
        host, port = inst["address"].rsplit(":", 1)
        assert _argv_has(inst, "--host", host, "--port", port, "--no-access-log"), inst

    # A drill kills one instance under load; the platform replaces it and loses nothing.
    out = asgi.cli(
        "drill",
        "run",
        "instance-kill",
        "--journey",
        "/",
        "--rate",
        "40",
        "--duration",
        "3s",
        "--json",
        check=False,
        timeout=180,
    )
    result: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip() else {}
    measures = result.get("measures") or {}
    print(
        f"[asgi-unchanged] instance-kill: {result.get('status')} ({result.get('reason')}); "
        f"{measures.get('requests')} requests, {measures.get('failed_after_fault')} failed "
        "after the fault"
    )
    assert out.returncode == 0, (out.stderr, result)
    assert result["status"] == "passed", result
    (fault,) = result["faults"]
    assert fault["kind"] == "kill" and fault["target"].startswith("hello-"), fault
    assert fault["undone_at"] is not None
    wait_for("every instance ready again", lambda: asgi.status()["converged"], timeout=60)

    asgi.cli("down", timeout=120)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{asgi.front_door}/", timeout=2.0, trust_env=False)
    alive = [pid for pid, start in asgi.recorded_processes() if _running(pid, start)]
    assert alive == [], "down left these running"


def _running(pid: int, start_time: float) -> bool:
    """The recorded process itself (not a later one with its pid) is still running."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start_time) <= 0.05 and (
            proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False
