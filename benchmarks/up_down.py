"""Seconds `alwayson up` and `alwayson down` take on a small platform, as a user types them.

    flock /tmp/alwayson-heavy.lock .venv/bin/python benchmarks/up_down.py [--runs 5] [--json]

The platform is the tests' three-service spec (tests/support.three_service_spec: three
echo services, two replicas in each of two sites, a gateway per site and the front door:
16 processes, one controller, no database), on private loopback subnets and ports. Each
run is a fresh folder: `up --timeout 60` (from the command until every process is ready)
then `down` (until every process and the controller have stopped). Every integration test
pays these two commands at least once, so they set much of the test suite's time.

The commands run this interpreter's `alwayson` (``sys.executable -m alwayson.cli.main``),
so a throw-away venv whose path puts another source tree first measures that tree; the
processes the platform starts run the same interpreter. Whatever a run leaves is killed
by its recorded pid at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers: subnets, ports, the echo app, cleanup
from benchmarks.cli import figures  # noqa: E402
from tests.support import (  # noqa: E402
    APPS,
    isolate,
    kill_recorded,
    three_service_spec,
    write_spec,
)


def alwayson(spec: Path, *args: str) -> float:
    """Run ``alwayson ARGS -f SPEC``; its wall time (RuntimeError when it fails)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "alwayson.cli.main", *args, "-f", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"`alwayson {' '.join(args)}` exited {done.returncode}:\n{done.stderr}")
    return took


def one_run() -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="alwayson-updown-") as tmp:
        folder = Path(tmp) / "platform"
        folder.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(folder, 0o755)
        shutil.copy(APPS / "echo.py", folder / "echo.py")
        spec = folder / "alwayson.yaml"
        write_spec(spec, isolate(three_service_spec()))
        try:
            up = alwayson(spec, "up", "--timeout", "60")
            down = alwayson(spec, "down")
        finally:
            kill_recorded(folder / ".alwayson")
    return up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh platforms to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ups, downs = [], []
    for n in range(args.runs):
        up, down = one_run()
        ups.append(up)
        downs.append(down)
        print(f"run {n + 1}: up {up:.2f}s, down {down:.2f}s", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "benchmark": "up_down",
        "python": sys.executable,
        "runs": args.runs,
        "up_seconds": figures(ups),
        "down_seconds": figures(downs),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name in ("up_seconds", "down_seconds"):
            f = report[name]
            print(
                f"{name[:-8]:<5} median {f['median']:.2f}s (min {f['min']:.2f}, max {f['max']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
