"""A controller in every site, one leader elected on etcd (issue 14, item 3).

The sample bank's core on a synchronous database runs three etcd members and three
controllers. The leader is SIGKILLed in the middle of a canary release: another site's
controller answers the API within 5 s, continues the release from its step (the same
release, no stage repeated or skipped) and restarts the killed controller. A follower
answers reads and passes writes to the leader; ``audit`` and ``events`` show both terms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from typing import Any

import httpx
from tests.support import Platform, wait_for

SERVICE = "accounts"
API_BACK_TARGET = 5.0


def _release(platform: Platform) -> dict[str, Any]:
    rows = json.loads(platform.cli("release", "status", SERVICE, "--json").stdout)
    assert rows, "no release"
    return dict(rows[-1])


def _controllers(platform: Platform) -> dict[str, dict[str, Any]]:
    return {i["site"]: i for i in platform.status()["instances"] if i["kind"] == "controller"}


def _apis(platform: Platform) -> dict[str, str]:
    cluster = json.loads((platform.state_dir / "control" / "cluster.json").read_text())
    return dict(cluster["apis"])


def _token(platform: Platform) -> str:
    return (platform.state_dir / "token").read_text().strip()


class Traffic:
    """GETs through the front door to the service, so a canary has requests to judge."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2.0) as http:
            n = 0
            while not self.done.is_set():
                n += 1
                with contextlib.suppress(httpx.HTTPError):
                    http.get(f"{self.url}/accounts/{n}")
                self.done.wait(0.02)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def test_leader_killed_mid_canary_another_site_answers_and_continues_it(bank: Platform) -> None:
    apis = _apis(bank)
    assert sorted(apis) == ["jakarta", "surabaya", "witness"]
    controllers = _controllers(bank)
    assert sorted(controllers) == ["jakarta", "surabaya", "witness"]
    assert all(c["ready"] for c in controllers.values())
    first = bank.leader()
    assert first is not None and first["site"] in apis

    # A follower answers who leads itself and passes a write on to the leader.
    follower = next(api for site, api in apis.items() if site != first["site"])
    auth = {"Authorization": f"Bearer {_token(bank)}", "X-Alwayson-Command": "test"}
    seen = httpx.get(f"http://{follower}/api/v1/leader", headers=auth, timeout=5).json()
    assert (seen["role"], seen["leader"]["site"]) == ("follower", first["site"])
    passed = httpx.post(
        f"http://{follower}/api/v1/scale",
        json={"service": "audit", "replicas": 1, "site": None},
        headers=auth,
        timeout=30,
    )
    assert passed.status_code == 200, passed.text
    assert passed.headers["X-Alwayson-Leader"] == first["site"]
    kept = httpx.get(f"http://{follower}/api/v1/audit", headers=auth, timeout=5)
    assert kept.status_code == 200 and "X-Alwayson-Leader" not in kept.headers  # its own read
    assert any(a["action"] == "scale" for a in kept.json())
    anonymous = httpx.get(f"http://{follower}/api/v1/status", timeout=5)
    assert anonymous.status_code == 401  # the leader checks the token of a passed request
    page = httpx.get(f"http://{follower}/", timeout=5)  # the dashboard, from any controller
    assert page.status_code == 200 and "<html" in page.text.lower()
    board = httpx.get(f"http://{follower}/api/v1/dashboard", headers=auth, timeout=10)
    assert board.status_code == 200, board.text

    traffic = Traffic(bank.front_door)
    try:
        bank.cli(
            "deploy",
            SERVICE,
            "--version",
            "2.0.0",
            "--strategy",
            "canary",
            "--steps",
            "50,100",
            "--pause",
            "4s",
            "--settings-json",
            '{"analysis": {"interval": "1s", "min_requests": 5, "failure_limit": 2}}',
        )
        wait_for(
            "the canary step to settle",
            lambda: _release(bank)["history"][-1].get("settled_at") is not None,
            90,
        )
        before = _release(bank)
        assert before["phase"] == "progressing"

        os.kill(int(first["pid"]), signal.SIGKILL)
        killed_at = time.monotonic()
        others = [api for site, api in apis.items() if site != first["site"]]
        back = _first_answer(others, auth, deadline=30.0) - killed_at
        print(f"leader controller SIGKILLed: the API answered again after {back:.2f} s")
        assert back <= API_BACK_TARGET, f"the API answered again after {back:.2f}s"

        wait_for(
            "the release to end",
            lambda: _release(bank)["phase"] in ("succeeded", "rolled-back"),
            120,
        )
        release = _release(bank)
    finally:
        traffic.stop()
    assert release["phase"] == "succeeded", release["message"]
    assert release["id"] == before["id"]
    names = [h["name"] for h in release["history"]]
    assert names == [s["name"] for s in release["stages"]], names  # none repeated or skipped

    second = bank.leader()
    assert second is not None and second["site"] != first["site"]
    assert second["term"] > first["term"]
    wait_for(
        "the killed controller to be restarted by the new leader",
        lambda: (c := _controllers(bank)[first["site"]])["ready"] and c["pid"] != first["pid"],
        60,
    )

    # What happened under both leaders is kept (etcd), and the CLI finds the leader.
    leaders = json.loads(bank.cli("events", "--kind", "leader", "--json").stdout)
    terms = {e["data"]["term"] for e in leaders}
    assert {first["term"], second["term"]} <= terms
    audit = json.loads(bank.cli("audit", "--json").stdout)
    done = [
        (a["action"], a["detail"]["leader"]) for a in audit if a["action"] in ("scale", "deploy")
    ]
    assert done[:2] == [
        ("deploy", f"controller@{first['site']}"),
        ("scale", f"controller@{first['site']}"),
    ]


def _first_answer(apis: list[str], auth: dict[str, str], deadline: float) -> float:
    """When a controller among ``apis`` first answered a status request (monotonic): the
    answer's arrival, however long the new leader took to give it."""
    end = time.monotonic() + deadline
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=0.5)) as http:
        while time.monotonic() < end:
            for api in apis:
                try:
                    if http.get(f"http://{api}/api/v1/status", headers=auth).status_code == 200:
                        return time.monotonic()
                except httpx.HTTPError:
                    continue
            time.sleep(0.02)
    raise AssertionError(f"no controller among {apis} answered within {deadline:.0f}s")
