"""Seconds the CLI takes to answer: `alwayson --help` and `alwayson status`.

    .venv/bin/python benchmarks/cli.py [--runs 5] [--json]

Each figure is the wall time of the whole command as an operator types it (the `alwayson`
script beside this Python, run from the sample bank's folder), after one warm-up run that
is not counted; it prints the median, min and max of the counted runs. `status` asks the
running sample bank (examples/digital-bank/alwayson.yaml). When none answers, the
benchmark brings it up itself, lets it settle for SETTLE seconds (a bank just started is
busy with its first probes, scrapes and checks), and takes it down at the end; a bank that
was already up is left running. Bringing the bank up is heavy: run this under the shared lock
(`flock /tmp/alwayson-heavy.lock ...`) on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "digital-bank"
ALWAYSON = Path(sys.executable).parent / "alwayson"
SETTLE = 15.0  # seconds a bank this benchmark started gets for its first probes and scrapes
COMMANDS: dict[str, list[str]] = {
    "alwayson --help": ["--help"],
    "alwayson status": ["status"],
}


def run_cli(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ALWAYSON), *args],
        cwd=SAMPLE,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def bank_is_up() -> bool:
    """True when the sample bank's controller answers `status` with its platform."""
    done = run_cli("status", "--json", timeout=60.0)
    if done.returncode != 0:
        return False
    return json.loads(done.stdout).get("platform") is not None


def timed(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` runs after one warm-up; a failed run stops the benchmark."""
    seconds: list[float] = []
    for index in range(runs + 1):
        started = time.perf_counter()
        done = run_cli(*args, timeout=60.0)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"alwayson {' '.join(args)} failed:\n{done.stderr}")
        if index > 0:
            seconds.append(took)
    return seconds


def figures(seconds: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(seconds), 3),
        "min": round(min(seconds), 3),
        "max": round(max(seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="Counted runs of each command.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    started_bank = False
    if not bank_is_up():
        print("bringing the sample bank up (alwayson up) ...", file=sys.stderr)
        up = run_cli("up", "--timeout", "180", timeout=400.0)
        if up.returncode != 0:
            run_cli("down")
            raise SystemExit(f"alwayson up failed:\n{up.stderr}")
        started_bank = True
        time.sleep(SETTLE)
    try:
        results = {name: figures(timed(argv, args.runs)) for name, argv in COMMANDS.items()}
    finally:
        if started_bank:
            down = run_cli("down")
            if down.returncode != 0:
                print(down.stderr, file=sys.stderr)
    report: dict[str, Any] = {
        "runs": args.runs,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    cores, python = report["cores"], report["python"]
    print(f"{args.runs} runs each after a warm-up, {cores} cores, Python {python}")
    for name, row in results.items():
        print(
            f"{name:18} median {row['median']:.3f} s  min {row['min']:.3f} s  "
            f"max {row['max']:.3f} s"
        )


if __name__ == "__main__":
    main()
