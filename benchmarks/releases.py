"""Releases under load: requests sent and failed, release time, and rollback time of bad canaries.

    .venv/bin/python benchmarks/releases.py [--runs 1] [--json]

Runs the sample bank's ``fx`` service alone (it calls no other service) from a temporary
copy: 2 replicas in each of two workload sites plus a witness, on private loopback subnets
(taken through the tests' own subnet locks, so a test run never shares one) and private
ports.
Analysis every 2 s, a rollback after 2 failed analyses, 20 candidate requests for a verdict.

Scenarios, each a release of a new version under ``wrk -t1 -c8`` (GET /fx/rates on the
front door) started a second before the deploy and stopped a second after the release ends:

- ``rolling``       the default rolling release of a good version
- ``blue-green``    a good version: preview analysed 4 s, automatic switch, old version kept 3 s
- ``canary``        a good version through steps 10,50,100 with 4 s pauses
- ``canary-5xx``    ``python -m bank.fx --fail-rate 0.3`` through 20,50,100 with 10 s pauses
- ``canary-slow``   ``python -m bank.fx --delay 0.3``, the same steps

The good ones should fail nothing; the bad ones should roll back by themselves within 10 s
of the first failed analysis (``rollback_seconds``: from that analysis to no gateway sending
ordinary traffic to the candidate), failing only the canary's share until then.
``--runs N`` repeats every scenario and reports the median of each figure.

wrk's window is a few seconds longer than the release (the second either side, the
``deploy`` command's start-up, the 0.5 s status polling); the release's own ``totals``,
counted by the gateways, cover only ``started_at`` to ``ended_at``.

wrk is installed with apt-get when missing. ``alwayson down`` runs at the end and every
process recorded in the state directory is then killed by its pid, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reporting import finish
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' platform helpers: wrk, subnets, cleanup by pid
from tests.support import Wrk, free_port, kill_recorded, reserve_subnet  # noqa: E402

BANK = ROOT / "examples" / "digital-bank" / "bank"
SERVICE = "fx"
FX_RATES = 'request = function()\n  return wrk.format("GET", "/fx/rates")\nend\n'
TARGET_REQUESTS = 20_000
TARGET_ROLLBACK_SECONDS = 10.0
ENDED = ("succeeded", "rolled-back")


@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]  # `alwayson deploy fx --version V` then these
    expect: str  # the phase the release should end in
    bad: bool = False


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    bad_canary = ("--strategy", "canary", "--steps", "20,50,100", "--pause", "10s")
    return [
        Scenario("rolling", ("--strategy", "rolling"), "succeeded"),
        Scenario(
            "blue-green",
            (
                "--strategy",
                "blue-green",
                "--scale-down-delay",
                args.scale_down_delay,
                "--settings-json",
                json.dumps(
                    {"blue_green": {"auto_promote": True, "analysis": args.preview_analysis}}
                ),
            ),
            "succeeded",
        ),
        Scenario(
            "canary",
            ("--strategy", "canary", "--steps", "10,50,100", "--pause", args.canary_pause),
            "succeeded",
        ),
        Scenario(
            "canary-5xx",
            ("--run", "python -m bank.fx --fail-rate 0.3", *bad_canary),
            "rolled-back",
            bad=True,
        ),
        Scenario(
            "canary-slow",
            ("--run", "python -m bank.fx --delay 0.3", *bad_canary),
            "rolled-back",
            bad=True,
        ),
    ]


# -- the machine, tools, ports and subnets -----------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk with apt-get", file=sys.stderr)
    install = ["apt-get", "install", "-y", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is still missing after apt-get install")


def spec() -> dict[str, Any]:
    analysis = {"interval": "2s", "failure_limit": 2, "min_requests": 20}
    return {
        "platform": "release-bench",
        "controller": {"api": f"127.0.0.1:{free_port()}"},
        "front_door": {"listen": f"127.0.0.1:{free_port()}"},
        "gateway": {"port": free_port(), "admin_port": free_port()},
        "sites": [
            {"name": "jakarta", "subnet": f"127.{reserve_subnet()}.0.0/16"},
            {"name": "surabaya", "subnet": f"127.{reserve_subnet()}.0.0/16"},
            {"name": "witness", "witness": True, "subnet": f"127.{reserve_subnet()}.0.0/16"},
        ],
        "services": [
            {
                "name": SERVICE,
                "version": "1.0.0",
                "run": "python -m bank.fx",
                "port": 8011,
                "replicas": 2,
                "health": {"http": "/healthz", "interval": "500ms", "timeout": "400ms"},
                "routes": [{"path": "/fx"}],
                "release": {"analysis": analysis},
            }
        ],
    }


def alwayson_cli(spec_path: Path, *args: str, check: bool = True, timeout: float = 120) -> str:
    """Run ``alwayson ARGS -f SPEC`` as a user would; its stdout (RuntimeError on failure
    when ``check``). Every benchmark's platform talks to it through this one function."""
    result = subprocess.run(
        [sys.executable, "-m", "alwayson.cli.main", *args, "-f", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`alwayson {' '.join(args)}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


# -- the platform ------------------------------------------------------------------------


class Bench:
    """One platform in a temporary folder; ``close()`` downs it and kills what is left."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shutil.copytree(BANK, folder / "bank", ignore=shutil.ignore_patterns("__pycache__"))
        data = spec()
        self.spec_path = folder / "alwayson.yaml"
        with self.spec_path.open("w") as out:
            YAML().dump(data, out)
        self.state_dir = folder / ".alwayson"
        self.front_door = f"http://{data['front_door']['listen']}"

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return alwayson_cli(self.spec_path, *args, check=check, timeout=timeout)

    def release(self) -> dict[str, Any]:
        rows = json.loads(self.cli("release", "status", SERVICE, "--json"))
        if not rows:
            raise RuntimeError(f"no release of {SERVICE}")
        return dict(rows[-1])

    def wait_end(self, timeout: float) -> dict[str, Any]:
        """Poll the release until it ends (the CLI's own watch: every 0.5 s, one process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = max(5.0, deadline - time.monotonic())
            release: dict[str, Any] | None = None
            with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError, ValueError):
                out = self.cli("release", "status", SERVICE, "--watch", "--json", timeout=left)
                release = json.loads(out)
            if release is None or not isinstance(release, dict):
                release = self.release()
            if release["phase"] in ENDED:
                return release
            time.sleep(0.5)
        raise RuntimeError(f"the release did not end within {timeout:g}s: {self.release()}")

    def close(self) -> None:
        if (self.state_dir / "controller.json").exists():
            try:
                self.cli("down", check=False, timeout=90)
            except subprocess.TimeoutExpired:
                print("`alwayson down` timed out", file=sys.stderr)
        killed = kill_recorded(self.state_dir)
        if killed:
            print(f"killed leftover processes {killed}", file=sys.stderr)


# -- load --------------------------------------------------------------------------------


# -- one release -------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    version: str
    phase: str
    expected_phase: str
    requests: int
    failed: int
    wrk_seconds: float
    release_seconds: float
    rollback_seconds: float | None
    totals: dict[str, Any]
    message: str
    first_failure: dict[str, Any] | None = None
    wrk_output: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)


def one_release(bench: Bench, scenario: Scenario, version: str, work: Path, timeout: float) -> Run:
    wrk = Wrk(bench.front_door, FX_RATES, work, seconds=int(timeout) + 60)
    try:
        time.sleep(1.0)  # load before the release starts (wrk has no readiness to poll)
        bench.cli("deploy", SERVICE, "--version", version, *scenario.args)
        release = bench.wait_end(timeout)
        time.sleep(1.0)  # and after it ends
        load = wrk.stop()
    finally:
        wrk.kill()
    failing = [d for d in release["decisions"] if d["outcome"] == "fail"]
    first = None
    if failing:
        first = {
            "stage": failing[0]["stage"],
            "reasons": failing[0]["reasons"],
            "figures": failing[0]["figures"],
        }
    return Run(
        scenario=scenario.name,
        version=version,
        phase=release["phase"],
        expected_phase=scenario.expect,
        requests=load.requests,
        failed=load.failed,
        wrk_seconds=load.seconds,
        release_seconds=round(release["ended_at"] - release["started_at"], 2),
        rollback_seconds=(
            None if release["rollback_seconds"] is None else round(release["rollback_seconds"], 2)
        ),
        totals=release["totals"],
        message=release["message"],
        first_failure=first,
        wrk_output=load.output,
        decisions=release["decisions"],
    )


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarise(runs: list[Run]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "requests": median([r.requests for r in runs]),
        "failed": median([r.failed for r in runs]),
        "wrk_seconds": median([r.wrk_seconds for r in runs]),
        "release_seconds": median([r.release_seconds for r in runs]),
        "rollback_seconds": median([r.rollback_seconds for r in runs]),
        "phases": [r.phase for r in runs],
        "as_expected": all(r.phase == r.expected_phase for r in runs),
    }


def notes(name: str, scenario: Scenario, runs: list[Run]) -> list[str]:
    """What falls short of the targets, in sentences."""
    out = []
    for n, run in enumerate(runs, 1):
        tag = f"{name} run {n}"
        if run.phase != scenario.expect:
            out.append(f"{tag}: ended {run.phase}, expected {scenario.expect}: {run.message}")
        if not scenario.bad and run.requests < TARGET_REQUESTS:
            out.append(f"{tag}: wrk sent {run.requests} requests, fewer than {TARGET_REQUESTS}")
        if not scenario.bad and run.failed:
            out.append(f"{tag}: {run.failed} failed requests (wrk)")
        if scenario.bad:
            if run.rollback_seconds is None or run.rollback_seconds > TARGET_ROLLBACK_SECONDS:
                out.append(
                    f"{tag}: rollback took {run.rollback_seconds}s "
                    f"(target <= {TARGET_ROLLBACK_SECONDS:g}s)"
                )
            counted = int(run.totals.get("failed", 0))
            if run.failed > counted + 10:
                out.append(f"{tag}: wrk saw {run.failed} failures, the gateways counted {counted}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_wrk()
    about_machine = machine()  # before the platform adds its own load
    chosen = [s for s in scenarios(args) if s.name in args.scenarios]
    results: dict[str, list[Run]] = {s.name: [] for s in chosen}
    up_seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="relbench-") as tmp:
        work = Path(tmp)
        # Workloads run as `nobody` under root: they must be able to enter the folder.
        os.chmod(work, 0o755)
        folder = work / "platform"
        folder.mkdir(mode=0o755)
        bench = Bench(folder)
        try:
            started = time.monotonic()
            bench.cli("up", "--timeout", "90", timeout=180)
            up_seconds = round(time.monotonic() - started, 2)
            log(f"platform up in {up_seconds:.1f}s; front door {bench.front_door}")
            minor = 0
            for n in range(args.runs):
                for scenario in chosen:
                    minor += 1
                    version = f"1.{minor}.0" + ("-bad" if scenario.bad else "")
                    log(f"run {n + 1}: {scenario.name} → {version} ...")
                    result = one_release(bench, scenario, version, work, args.timeout)
                    results[scenario.name].append(result)
                    log(
                        f"  {result.phase} in {result.release_seconds:.1f}s; wrk sent "
                        f"{result.requests}, failed {result.failed}; rollback "
                        f"{result.rollback_seconds} s; totals {result.totals}",
                    )
        finally:
            bench.close()
    by_name = {s.name: s for s in chosen}
    return {
        "benchmark": "releases",
        "machine": about_machine,
        "load": "wrk -t1 -c8 --timeout 5s, GET /fx/rates on the front door",
        "analysis": {"interval_s": 2, "failure_limit": 2, "min_requests": 20},
        "platform_up_seconds": up_seconds,
        "targets": {
            "requests_per_release": TARGET_REQUESTS,
            "rollback_seconds": TARGET_ROLLBACK_SECONDS,
        },
        "summary": {name: summarise(runs) for name, runs in results.items() if runs},
        "notes": [n for name, runs in results.items() for n in notes(name, by_name[name], runs)],
        "runs": {name: [asdict(r) for r in runs] for name, runs in results.items()},
    }


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['kernel']}, Python {m['python']}, "
        f"load average at start {m['load_average_at_start']}"
    )
    print(
        f"fx, 2 replicas x 2 sites; {report['load']}; analysis every 2 s, "
        f"failure_limit 2, min_requests 20"
    )
    runs = next(iter(report["summary"].values()))["runs"] if report["summary"] else 0
    print(
        f"median of {runs} run(s); requests, failed and wrk s are wrk's, from a second before "
        "the deploy to a second after the end;\nrelease s is ended_at - started_at; rollback s "
        "from the first failed analysis to no ordinary traffic on the candidate\n"
    )
    header = f"{'strategy':<13}{'phase':<13}{'requests':>10}{'failed':>8}"
    print(header + f"{'wrk s':>8}{'release s':>11}{'rollback s':>12}")
    for name, s in report["summary"].items():
        rollback = "-" if s["rollback_seconds"] is None else f"{s['rollback_seconds']:.2f}"
        print(
            f"{name:<13}{'/'.join(sorted(set(s['phases']))):<13}{s['requests']:>10,.0f}"
            f"{s['failed']:>8,.0f}{s['wrk_seconds']:>8.1f}{s['release_seconds']:>11.1f}"
            f"{rollback:>12}"
        )
    bad = [(n, r) for n, rs in report["runs"].items() for r in rs if r["first_failure"]]
    if bad:
        print("\nfirst failed analysis:")
        for name, r in bad:
            f = r["first_failure"]
            print(f"  {name} ({f['stage']}): {'; '.join(f['reasons'])}")
    print("\nrelease totals (gateway counts):")
    for name, rs in report["runs"].items():
        for r in rs:
            t = r["totals"]
            print(
                f"  {name}: by version {t.get('requests_by_version')}, requests "
                f"{t.get('requests')}, failed {t.get('failed')}, dropped {t.get('dropped')}"
            )
    if report["notes"]:
        print("\nnotes:")
        for note in report["notes"]:
            print(f"  - {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeats; the median is reported")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.add_argument("--canary-pause", default="4s", help="good canary: pause per step")
    parser.add_argument("--preview-analysis", default="4s", help="blue-green: preview analysis")
    parser.add_argument("--scale-down-delay", default="3s", help="blue-green: old version kept")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a release may take")
    names = [s.name for s in scenarios(parser.parse_args([]))]
    parser.add_argument("--scenarios", nargs="+", choices=names, default=names, metavar="NAME")
    args = parser.parse_args()

    return finish(args, run, print_report, "interrupted; the platform was stopped")


if __name__ == "__main__":
    sys.exit(main())
