"""How long the API is away when the leading controller is SIGKILLed (issue 14, item 3).

With a platform with databases up (a controller in every site), this kills the leader
``--rounds`` times. Each round: SIGKILL the leader's pid (as ``/api/v1/leader`` names
it), then ask every other controller for ``/api/v1/status`` until one answers 200 (the
next leader, or a follower passing the request to it); the time from the kill to that
answer is the figure. Between rounds it waits until the killed controller has been
restarted by the new leader and is ready, and the platform is steady again.

    .venv/bin/python benchmarks/controller_failover.py examples/digital-bank/alwayson.yaml

Prints one JSON object: every round's seconds, min / median / max, and who led before
and after. Only loopback addresses from the spec's own state directory are contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _apis(state_dir: Path) -> dict[str, str]:
    return dict(json.loads((state_dir / "control" / "cluster.json").read_text())["apis"])


def _leader(apis: dict[str, str], auth: dict[str, str]) -> dict[str, Any]:
    for api in apis.values():
        try:
            seen = httpx.get(f"http://{api}/api/v1/leader", headers=auth, timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            continue
        if seen.get("role") == "leader":
            return dict(seen["leader"])
    raise SystemExit("no controller leads: is the platform up (`alwayson up`)?")


def _steady(apis: dict[str, str], auth: dict[str, str], deadline: float) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            leader = _leader(apis, auth)
            status = httpx.get(
                f"http://{leader['api']}/api/v1/status", headers=auth, timeout=5.0
            ).json()
        except (SystemExit, httpx.HTTPError, ValueError):
            time.sleep(0.2)
            continue
        controllers = [i for i in status["instances"] if i["kind"] == "controller"]
        if status.get("converged") and all(c["ready"] for c in controllers):
            return leader
        time.sleep(0.2)
    raise SystemExit(f"the platform was not steady again within {deadline:.0f}s")


def _round(apis: dict[str, str], auth: dict[str, str]) -> dict[str, Any]:
    before = _steady(apis, auth, 120)
    others = [api for site, api in apis.items() if site != before["site"]]
    os.kill(int(before["pid"]), signal.SIGKILL)
    killed = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=0.5)) as http:
        while time.monotonic() - killed < 60:
            for api in others:
                try:
                    answer = http.get(f"http://{api}/api/v1/status", headers=auth)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    back = time.monotonic() - killed
                    after = answer.json().get("leadership", {}).get("leader") or {}
                    return {
                        "seconds": round(back, 3),
                        "killed": before["site"],
                        "next": after.get("site"),
                    }
            time.sleep(0.02)
    raise SystemExit("no controller answered within 60 s of the kill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state_dir = args.spec.resolve().parent / ".alwayson"
    token = (state_dir / "token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}", "X-Alwayson-Command": "benchmark"}
    apis = _apis(state_dir)
    rounds = []
    for n in range(args.rounds):
        result = _round(apis, auth)
        rounds.append(result)
        print(f"round {n + 1}: {result}", file=sys.stderr)
    _steady(apis, auth, 120)
    seconds = [r["seconds"] for r in rounds]
    print(
        json.dumps(
            {
                "benchmark": "controller-failover",
                "rounds": rounds,
                "min": min(seconds),
                "median": statistics.median(seconds),
                "max": max(seconds),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
