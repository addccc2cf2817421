"""``alwayson loadtest`` as a user runs it, against a real echo server on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from tests.support import APPS, ROOT, free_port, wait_for

from alwayson.loadgen import RunResult

CLI = ROOT / ".venv" / "bin" / "alwayson"
Serve = Callable[..., str]


def alwayson(
    *args: str, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = str(CLI) if CLI.exists() else "alwayson"
    return subprocess.run(
        [command, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start ``tests/apps/echo.py`` with flags; its base URL. Stopped by pid afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> str:
        port = free_port()
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
        proc = subprocess.Popen(
            [sys.executable, str(APPS / "echo.py"), *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(proc)
        wait_for(f"echo on port {port}", lambda: proc.poll() is None and _accepts(port), 10)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_a_passing_run_exits_0_with_consistent_figures_a_report_and_a_saved_result(
    serve: Serve, tmp_path: Path
) -> None:
    base = serve()
    html, saved = tmp_path / "report.html", tmp_path / "run.json"
    run = alwayson(
        "loadtest", f"{base}/accounts", f"{base}/cards?limit=5",
        "--rate", "100", "--duration", "3s",
        "-t", "p99 < 2s", "-t", "error_rate < 1%",
        "--json", "--html", str(html), "--save", str(saved),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)  # stdout is the JSON and nothing else
    sent, ok, failed, dropped = (data["iterations"][k] for k in ("sent", "ok", "failed", "dropped"))
    print(f"sent {sent} ok {ok} failed {failed} dropped {dropped} rps {data['rps']}")
    assert sent == ok + failed and failed == 0
    assert sent + dropped == 300  # the schedule: 100/s for 3 s, exactly
    assert sent >= 285, "more than 5% dropped on an idle echo server"
    assert 85 <= data["rps"] <= 110
    assert data["requests"]["total"] == sent
    assert set(data["steps"]) == {"GET /accounts", "GET /cards?limit=5"}
    assert data["steps"]["GET /accounts"]["requests"] == (sent + 1) // 2
    assert [t["passed"] for t in data["thresholds"]] == [True, True] and data["passed"] is True
    assert data["latency_ms"]["p99.99"] is not None
    assert sum(r["sent"] for r in data["series"]) == sent
    assert "threshold pass: p99 < 2s" in run.stderr
    assert "sent" not in run.stderr.replace("threshold", "")  # no progress lines in --json

    page = html.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
    assert "<script" not in page and "url(" not in page
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "All 2 threshold(s) passed." in page

    again = RunResult.from_json(json.loads(saved.read_text()))
    assert (again.sent, again.ok) == (sent, ok)


def test_a_failing_threshold_exits_1_and_says_which(serve: Serve) -> None:
    base = serve("--delay", "0.05")
    run = alwayson(
        "loadtest", base, "--rate", "40", "--duration", "2s",
        "-t", "p99 < 1ms", "-t", "error_rate < 1%",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    stderr = one_line(run.stderr)
    assert re.search(r"threshold FAIL: p99 < 1ms \(actual: [\d.]+ms\)", stderr), stderr
    assert "threshold pass: error_rate < 1% (actual: 0%)" in stderr
    assert "1 of 2 threshold(s) failed" in stderr
    assert re.search(r"\d+s/2s sent \d+ \(\d+/s\) ok \d+ failed 0 dropped 0 p99", stderr), stderr
    assert "p99.99" in run.stdout and "GET /" in run.stdout  # the summary tables


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate", "-5", "{base}"], "error: --rate: a rate is more than 0 per second"),
        (["--duration", "soon", "{base}"], "error: --duration: 'soon' is not a duration"),
        (["-t", "p99 < 200", "{base}"], "error: --threshold: threshold 'p99 < 200'"),
        (["127.0.0.1:9/x"], "error: URL '127.0.0.1:9/x': needs http:// or https://"),
        (
            ["--journey", "bank-signup", "{base}"],
            "unknown journey 'bank-signup'; built in: bank-registration,",
        ),
        (["--users", "2", "--rate", "5", "{base}"], "error: --users runs a closed model"),
        (["--workers", "many", "{base}"], "error: --workers: 'many' is not a number or 'auto'"),
        (["--soak", "{base}"], "error: --soak needs --report-dir DIR"),
        (["--report-dir", "x", "{base}"], "error: --snapshot-every and --report-dir go with"),
        (
            ["--soak", "--report-dir", "x", "--snapshot-every", "often", "{base}"],
            "error: --snapshot-every: 'often' is not a duration",
        ),
        (["merge"], "error: merge: give the saved results"),
    ],
)
def test_bad_input_exits_2_naming_the_option(args: list[str], says: str) -> None:
    base = "http://127.0.0.1:9"  # nothing is sent: the command line is refused first
    run = alwayson("loadtest", *(a.format(base=base) for a in args))
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert says in one_line(run.stderr)
    assert "sent" not in run.stderr  # refused before any load


def test_two_workers_merge_into_one_result(serve: Serve) -> None:
    base = serve()
    run = alwayson(
        "loadtest", f"{base}/w", "--rate", "100", "--duration", "2s",
        "--workers", "2", "--json", "-t", "dropped < 10",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    it = data["iterations"]
    print(f"2 workers: {it} rps {data['rps']}")
    assert data["workers"] == 2
    assert it["sent"] + it["dropped"] == 200 and it["sent"] == it["ok"] + it["failed"]
    assert it["failed"] == 0
    assert data["steps"]["GET /w"]["requests"] == it["sent"]
    assert sum(r["ok"] for r in data["series"]) == it["ok"]


def test_a_users_journey_runs_with_virtual_users(serve: Serve, tmp_path: Path) -> None:
    base = serve()
    script = tmp_path / "browse.py"
    script.write_text(
        "async def browse(session):\n"
        "    await session.get('/home', name='home')\n"
        "    await session.post('/basket', name='add to basket', json={'sku': 1})\n"
    )
    run = alwayson(
        "loadtest", "--journey", f"{script}:browse", base,
        "--users", "3", "--duration", "1s", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    steps = data["steps"]
    assert set(steps) == {"home", "add to basket"}
    assert steps["home"]["ok"] == data["iterations"]["ok"] > 0
    assert steps["add to basket"]["requests"] == data["iterations"]["ok"]
    assert data["iterations"]["dropped"] == 0


def test_a_journey_inside_a_platforms_folder_loads_its_front_door(
    serve: Serve, tmp_path: Path
) -> None:
    base = serve()
    script = tmp_path / "browse.py"
    script.write_text("async def browse(session):\n    await session.get('/home', name='home')\n")
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "alwayson.yaml").write_text(
        "platform: shop\n"
        "sites: [{name: jakarta}, {name: surabaya}, {name: witness, witness: true}]\n"
        f"front_door: {{listen: '{base.removeprefix('http://')}'}}\n"
        "services:\n"
        "  - {name: web, version: '1', run: python -m web, port: 8001}\n"
    )
    journey = ["loadtest", "--journey", f"{script}:browse", "--rate", "20", "--duration", "1s"]
    run = alwayson(*journey, "--json", cwd=folder)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["target"] == base and data["steps"]["home"]["ok"] == data["iterations"]["ok"] > 0
    elsewhere = alwayson(*journey, cwd=tmp_path)  # no alwayson.yaml here: the URL is needed
    assert elsewhere.returncode == 2
    assert "--journey: give the target's base URL once" in one_line(elsewhere.stderr)


def interrupt_when_progressing(args: list[str], log: Path) -> tuple[int, str]:
    """Start ``alwayson loadtest ARGS``, wait for a progress line, send SIGINT to its pid;
    its exit code and stderr. Killed by pid if it does not end."""
    command = str(CLI) if CLI.exists() else "alwayson"
    with log.open("wb") as out:
        proc = subprocess.Popen([command, "loadtest", *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            "a progress line",
            lambda: proc.poll() is None and re.search(r"sent [1-9][\d,]* \(", log.read_text()),
            timeout=20,
        )
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return code, log.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_drains_and_writes_the_partial_result_with_exit_130(
    serve: Serve, tmp_path: Path, workers: str
) -> None:
    base = serve()
    saved, html = tmp_path / "partial.json", tmp_path / "partial.html"
    args = [f"{base}/x", "--rate", "50", "--duration", "60s", "--workers", workers]
    args += ["--save", str(saved), "--html", str(html), "-t", "p99 < 10s"]

    code, output = interrupt_when_progressing(args, tmp_path / "out.log")

    assert code == 130, output
    assert "stopping: no new arrivals" in output
    data = json.loads(saved.read_text())
    it = data["iterations"]
    print(f"workers {workers}: {it}, {data['duration_s']} s")
    assert data["interrupted"] is True and data["workers"] == int(workers)
    assert it["sent"] > 0 and it["sent"] == it["ok"] + it["failed"] and it["failed"] == 0
    assert data["duration_s"] < 30  # cut short, not the 60 s asked for
    assert sum(r["sent"] for r in data["series"]) == it["sent"]
    assert "Interrupted: the run was stopped" in html.read_text()
    assert "interrupted: the figures cover the run until Ctrl-C" in one_line(output)


def test_merge_judges_saved_results_as_one_run(serve: Serve, tmp_path: Path) -> None:
    base = serve()
    parts = []
    for k in range(2):
        part = tmp_path / f"part-{k}.json"
        run = alwayson(
            "loadtest", f"{base}/m", "--rate", "20", "--duration", "1s", "--save", str(part),
            "--json",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        parts.append(part)

    merged = alwayson("loadtest", "merge", *map(str, parts), "--json", "-t", "sent == 40")
    refused = alwayson("loadtest", "merge", str(parts[0]), str(tmp_path / "missing.json"))

    assert merged.returncode == 0, merged.stderr
    data = json.loads(merged.stdout)
    assert data["workers"] == 2 and data["iterations"]["sent"] == 40
    assert data["steps"]["GET /m"]["requests"] == 40
    assert data["target"] == base and data["passed"] is True
    assert refused.returncode == 2 and "cannot read" in refused.stderr


def test_a_second_ctrl_c_quits_at_once_and_leaves_no_worker(serve: Serve, tmp_path: Path) -> None:
    base = serve("--delay", "30")  # nothing finishes: the drain would wait for the timeout
    saved, log = tmp_path / "never.json", tmp_path / "out.log"
    command = str(CLI) if CLI.exists() else "alwayson"
    args = [f"{base}/slow", "--rate", "20", "--duration", "60s", "--workers", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [command, "loadtest", *args, "--timeout", "60s", "--save", str(saved)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        workers = wait_for(
            "two workers", lambda: len(psutil.Process(proc.pid).children()) == 2 and
            psutil.Process(proc.pid).children(), timeout=20,
        )  # fmt: skip
        wait_for("a progress line", lambda: "sent " in log.read_text(), timeout=20)
        os.kill(proc.pid, signal.SIGINT)
        wait_for("the stop", lambda: "stopping: no new arrivals" in log.read_text(), timeout=10)
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    output = log.read_text()
    assert code == 130, output
    assert "quit at once, no result written" in output
    assert not saved.exists()
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
