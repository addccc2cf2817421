"""Bad input: clear errors that say what and where, nothing half-applied, the rest keeps running."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
from tests.support import Platform, echo_service, three_service_spec


def _processes(platform: Platform) -> list[Path]:
    return list(platform.state_dir.glob("run/instances/*.json"))


def test_invalid_spec_is_rejected_whole_and_starts_nothing(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    data = three_service_spec()
    data["services"][1]["port"] = 70000
    data["services"][2]["replicas"] = {"mars": 1}
    platform = make_platform(data, folder=echo_folder)
    result = platform.cli("up", check=False)
    assert result.returncode == 2
    assert f"{platform.spec_path}:" in result.stderr
    assert "services[1:cards].port" in result.stderr
    assert "less than or equal to 65535" in result.stderr
    assert not platform.state_dir.exists() or not _processes(platform)
    assert platform.controller_pid() is None


def test_missing_run_command_names_the_field(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    data = three_service_spec()
    data["services"][0]["run"] = "no-such-program-anywhere --flag"
    platform = make_platform(data, folder=echo_folder)
    result = platform.cli("up", check=False)
    assert result.returncode == 2
    assert "services[0:accounts].run: 'no-such-program-anywhere' was not found" in result.stderr
    assert platform.controller_pid() is None


def test_port_taken_refuses_apply_and_changes_nothing(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    platform = make_platform(three_service_spec(), folder=echo_folder)
    host, port = platform.front_door.removeprefix("http://").split(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        result = platform.cli("up", check=False)
    assert result.returncode == 1
    assert f"{host}:{port}" in result.stderr
    assert "front_door.listen" in result.stderr
    assert "nothing was changed" in result.stderr
    assert _processes(platform) == []


def test_unknown_service_is_a_clear_error(running_small: Platform) -> None:
    result = running_small.cli("scale", "no-such-service", "3", check=False)
    assert result.returncode == 1
    assert "unknown service 'no-such-service'" in result.stderr
    assert "accounts" in result.stderr
    result = running_small.cli("scale", "accounts", "3", "--site", "mars", check=False)
    assert result.returncode == 1
    assert "unknown workload site 'mars'" in result.stderr
    assert running_small.status()["drift"] == []


def test_never_ready_service_fails_up_but_the_rest_keeps_running(
    make_platform: Callable[..., Platform], echo_folder: Path
) -> None:
    data = three_service_spec()
    data["services"][2] = echo_service(
        "payments",
        8002,
        replicas=1,
        env={"ECHO_NEVER_READY": "1"},
        health={"http": "/healthz", "interval": "500ms", "timeout": "400ms", "start_timeout": "3s"},
    )
    platform = make_platform(data, folder=echo_folder)
    result = platform.cli("up", "--timeout", "60", check=False)
    assert result.returncode == 1
    # Whichever of the two payments instances the controller saw fail first.
    assert re.search(
        r"payments-(jakarta|surabaya)-1 \(payments in \1\): not ready 3s after start",
        result.stderr,
    ), result.stderr
    assert "HTTP 503" in result.stderr
    with httpx.Client(base_url=platform.front_door, trust_env=False, timeout=5) as client:
        assert client.get("/accounts/1").status_code == 200
        assert client.get("/payments/1").status_code == 503


def test_bad_spec_applied_to_a_running_platform_changes_nothing(running_small: Platform) -> None:
    before = {i["id"]: i["pid"] for i in running_small.status()["instances"]}
    good = running_small.spec_path.read_text()
    running_small.spec_path.write_text(
        good.replace("version: 1.0.0", "version: 1.0.1", 1) + "\nbogus: 1\n"
    )
    result = running_small.cli("apply", check=False)
    assert result.returncode == 2
    assert "bogus: unknown field" in result.stderr
    running_small.spec_path.write_text(good)
    assert {i["id"]: i["pid"] for i in running_small.status()["instances"]} == before
