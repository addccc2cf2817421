"""Fixtures shared by integration and e2e tests: real platforms on private loopback subnets.

Every platform a test starts is torn down by ``alwayson down`` and then, whatever happened,
every process recorded in its state directory is killed by pid (checked against its start
time), so a failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
# Subnets no demo uses (127.1/127.2 belong to the sample bank's default sites), each held
# by a lock file for the life of this test process so concurrent test runs never share one.
_SUBNET_LOCKS = Path(tempfile.gettempdir()) / "alwayson-test-subnets"
_held: dict[int, int] = {}
"""Subnet octet → the descriptor holding its lock file's flock."""
_cursor = 0


def reserve_subnet() -> int:
    """A /16 of 127.20-249 no other test process holds, kept until ``release_subnet`` or
    this process's exit. Taken round-robin, so a released one is reused as late as can be
    (a process that outlived its test's teardown would meet the next one there)."""
    global _cursor
    _SUBNET_LOCKS.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(_SUBNET_LOCKS, 0o777)
    for step in range(230):
        octet = 20 + (_cursor + step) % 230
        if octet in _held:
            continue
        fd = os.open(_SUBNET_LOCKS / f"{octet}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held[octet] = fd
        _cursor = (octet - 20 + 1) % 230
        return octet
    raise RuntimeError("no free test subnet in 127.20-249.0.0/16")


def release_subnet(octet: int) -> None:
    """Let other tests have the subnet again (after everything on it was stopped)."""
    fd = _held.pop(octet, None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Platform:
    spec_path: Path
    state_dir: Path
    api: str
    front_door: str
    env: dict[str, str] = field(default_factory=dict)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "alwayson.cli.main", *args]
        local = args[:1] in (("validate",), ("schema",)) or args[:2] == ("gateway", "serve")
        if args and not local and not any(a in ("-f", "--file") for a in args):
            cmd += ["-f", str(self.spec_path)]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200", **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`alwayson {' '.join(args)}` exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def instances(self, **match: Any) -> list[dict[str, Any]]:
        return [
            i for i in self.status()["instances"] if all(i.get(k) == v for k, v in match.items())
        ]

    def controller_pid(self) -> int | None:
        """The only controller's pid, or the leader's of a platform with one per site."""
        try:
            return int(json.loads((self.state_dir / "controller.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
        leader = self.leader()
        return int(leader["pid"]) if leader else None

    def leader(self) -> dict[str, Any] | None:
        """Who leads, as the first site controller that answers says (None: none does)."""
        try:
            apis = json.loads((self.state_dir / "control" / "cluster.json").read_text())["apis"]
        except (OSError, ValueError, KeyError):
            return None
        for api in apis.values():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                found = httpx.get(f"http://{api}/healthz", timeout=1.0).json().get("leader")
                if found:
                    return dict(found)
        return None

    def recorded_processes(self) -> list[tuple[int, float]]:
        return recorded_processes(self.state_dir)

    def kill_everything(self) -> list[int]:
        return kill_recorded(self.state_dir)


def recorded_processes(state_dir: Path) -> list[tuple[int, float]]:
    """(pid, start time) of every process a platform's state directory records."""
    out = []
    paths = [
        *state_dir.glob("run/instances/*.json"),
        *state_dir.glob("drills/*/runner.json"),
        state_dir / "controller.json",
    ]
    for path in paths:
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            out.append((int(record["pid"]), float(record["start_time"])))
    return out


def kill_recorded(state_dir: Path) -> list[int]:
    """Last-resort cleanup by pid (never by name), checked against start times."""
    killed = []
    for pid, start in recorded_processes(state_dir):
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - start) > 0.05:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            proc.kill()
            killed.append(pid)
        except psutil.Error:
            continue
    return killed


def write_spec(path: Path, data: dict[str, Any]) -> None:
    yaml = YAML()
    with path.open("w") as out:
        yaml.dump(data, out)


def open_to_workloads(folder: Path) -> None:
    """Let unprivileged workloads (``nobody``) reach ``folder``: every folder above it that
    pytest made private (``/tmp/pytest-of-root`` is 0700; pytest-xdist adds a level per
    worker) becomes searchable, up to the temporary directory."""
    top = Path(tempfile.gettempdir()).resolve()
    for up in [folder.resolve(), *folder.resolve().parents]:
        if up == top or up == up.parent:
            break
        with contextlib.suppress(OSError):
            if up.stat().st_uid == os.geteuid():
                os.chmod(up, up.stat().st_mode | 0o755)


def isolate(data: dict[str, Any]) -> dict[str, Any]:
    """Give a spec private ports and loopback subnets so tests never collide."""
    data = dict(data)
    data["controller"] = {"api": f"127.0.0.1:{free_port()}"}
    data["front_door"] = {"listen": f"127.0.0.1:{free_port()}"}
    data["gateway"] = {"port": free_port(), "admin_port": free_port()}
    sites = []
    for site in data["sites"]:
        site = dict(site)
        site["subnet"] = f"127.{reserve_subnet()}.0.0/16"
        sites.append(site)
    data["sites"] = sites
    return data


@pytest.fixture
def make_platform(tmp_path: Path) -> Iterator[Callable[..., Platform]]:
    made: list[Platform] = []
    leased: list[int] = []

    def make(
        data: dict[str, Any], folder: Path | None = None, name: str = "alwayson.yaml"
    ) -> Platform:
        root = folder or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        # Workloads run unprivileged under root: they must be able to enter the folder.
        open_to_workloads(tmp_path)
        data = isolate(data)
        leased.extend(int(site["subnet"].split(".")[1]) for site in data["sites"])
        spec_path = root / name
        write_spec(spec_path, data)
        platform = Platform(
            spec_path=spec_path,
            state_dir=root / ".alwayson",
            api=data["controller"]["api"],
            front_door=f"http://{data['front_door']['listen']}",
        )
        made.append(platform)
        return platform

    yield make
    for platform in made:
        if platform.controller_pid() is not None:
            with contextlib.suppress(Exception):
                platform.cli("down", check=False, timeout=60)
        platform.kill_everything()
    for octet in leased:  # everything on them is stopped: other tests may have them
        release_subnet(octet)


def echo_service(name: str, port: int, replicas: Any = 2, **extra: Any) -> dict[str, Any]:
    service = {
        "name": name,
        "version": "1.0.0",
        "run": "python echo.py",
        "port": port,
        "replicas": replicas,
        "health": {"http": "/healthz", "interval": "500ms", "timeout": "400ms"},
        "routes": [{"path": f"/{name}"}],
        "stop_grace": "3s",
    }
    service.update(extra)
    return service


def three_service_spec() -> dict[str, Any]:
    return {
        "platform": "test-bank",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [
            echo_service("accounts", 8000),
            echo_service("cards", 8001),
            echo_service("payments", 8002),
        ],
    }


@pytest.fixture
def echo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "platform"
    folder.mkdir()
    (folder / "echo.py").write_text((APPS / "echo.py").read_text())
    return folder


class Stream:
    """A steady stream of GETs in a background thread, counting every failure."""

    def __init__(
        self, url: str, paths: list[str], rate: float = 100.0, post_every: int = 0
    ) -> None:
        self.url, self.paths, self.period = url, paths, 1.0 / rate
        self.post_every = post_every
        self.sent = 0
        self.failures: list[str] = []
        self.longest_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        last_ok = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as client:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                path = self.paths[n % len(self.paths)]
                self.sent += 1
                try:
                    if self.post_every and n % self.post_every == 0:
                        response = client.post(path, content=b'{"amount": 1}')
                    else:
                        response = client.get(path)
                    if response.status_code != 200:
                        self.failures.append(
                            f"{path}: HTTP {response.status_code} {response.text[:120]}"
                        )
                    else:
                        now = time.monotonic()
                        self.longest_gap = max(self.longest_gap, now - last_ok)
                        last_ok = now
                except httpx.HTTPError as exc:
                    self.failures.append(f"{path}: {exc!r}")
                time.sleep(self.period)

    def wait_sent(self, count: int, timeout: float = 30.0) -> None:
        target = self.sent + count
        wait_for(f"{count} more requests", lambda: self.sent >= target, timeout)


@pytest.fixture
def running_small(make_platform: Callable[..., Platform], echo_folder: Path) -> Platform:
    """One service, one replica per site: the cheapest running platform."""
    data = three_service_spec()
    data["services"] = [echo_service("accounts", 8000, replicas=1)]
    platform = make_platform(data, folder=echo_folder)
    platform.cli("up", "--timeout", "60")
    return platform


_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class WrkResult:
    requests: int
    failed: int
    output: str
    seconds: float = 0.0  # how long wrk ran


def _wrk_binary() -> str:
    found = shutil.which("wrk")
    assert found, "wrk is required; scripts/test.sh installs it (apt-get install wrk)"
    return found


class Wrk:
    """wrk in the background for ``seconds``; ``result()`` parses its summary."""

    def __init__(self, url: str, script: str, folder: Path, seconds: int = 8) -> None:
        lua = folder / f"wrk-{os.getpid()}-{id(self)}.lua"
        lua.write_text(script)
        cmd = [_wrk_binary(), "-t1", "-c8", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.read()

    def result(self, timeout: float = 60) -> WrkResult:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        out = self._out
        match = re.search(r"(\d+) requests in", out)
        assert match, out
        failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        failed += int(non2xx.group(1)) if non2xx else 0
        took = re.search(r"requests in ([\d.]+)(us|ms|s|m|h)", out)
        seconds = float(took.group(1)) * _WRK_UNITS[took.group(2)] if took else 0.0
        return WrkResult(int(match.group(1)), failed, out, seconds)

    def stop(self) -> WrkResult:
        """End the run now (SIGINT: wrk stops and prints its summary)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.result()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
