"""Seconds from `alwayson up` to every instance ready, for the sample digital bank.

Runs the sample (15 services x 2 sites x 2 replicas, plus gateways and front doors) from a
temporary copy on private loopback subnets and ports, so it never disturbs a running demo:

    .venv/bin/python benchmarks/bringup.py [--runs 3] [--json]

Each run is a cold start (controller not running, no instance running) and ends with
`alwayson down`; the figure is the wall time of the `up` command, as a user sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "digital-bank"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(folder: Path) -> Path:
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
    yaml = YAML()
    spec_path = folder / "alwayson.yaml"
    data = yaml.load(spec_path.read_text())
    data["controller"] = {"api": f"127.0.0.1:{free_port()}"}
    data["front_door"] = {"listen": f"127.0.0.1:{free_port()}"}
    data["gateway"] = {"port": free_port(), "admin_port": free_port()}
    for index, site in enumerate(data["sites"]):
        site["subnet"] = f"127.{240 + index}.0.0/16"
    with spec_path.open("w") as out:
        yaml.dump(data, out)
    return spec_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alwayson.cli.main", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def one_run(spec: Path) -> dict[str, Any]:
    started = time.monotonic()
    result = cli("up", str(spec), "--json", "--timeout", "120")
    seconds = time.monotonic() - started
    try:
        status = json.loads(result.stdout)
    finally:
        down = cli("down", str(spec))
        if down.returncode != 0:
            print(down.stderr, file=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(f"up failed:\n{result.stderr}")
    workloads = sum(1 for i in status["instances"] if i["kind"] == "workload")
    return {"seconds": round(seconds, 2), "processes": status["ready"], "instances": workloads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alwayson-bringup-") as tmp:
        os.chmod(tmp, 0o755)
        spec = prepare(Path(tmp) / "digital-bank")
        runs = []
        for n in range(args.runs):
            run = one_run(spec)
            runs.append(run)
            if not args.json:
                print(
                    f"run {n + 1}: up in {run['seconds']:.2f}s "
                    f"({run['instances']} instances, {run['processes']} processes ready)"
                )
    seconds = [r["seconds"] for r in runs]
    summary = {
        "benchmark": "bringup",
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "target_seconds": 15.0,
        "runs": runs,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"bring-up of the sample bank: median {summary['median_seconds']:.2f}s "
            f"(min {min(seconds):.2f}s, max {max(seconds):.2f}s) over {len(runs)} runs; "
            f"target <= 15s; the hand-built stretch cluster took 20 minutes "
            f"({1200 / summary['median_seconds']:.0f}x faster)"
        )


if __name__ == "__main__":
    main()
