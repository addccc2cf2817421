"""``LocalRuntime`` passes the runtime conformance suite with real processes.

Every process a check starts is killed by pid at teardown, whatever happened: the pids the
runtimes know, the pid files of the state directory and the children the ``child``
program recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conformance.runtimes import CHECKS, Check, Program, eventually
from tests.support import free_port

from alwayson.runtime.base import InstanceSpec, Kind, Runtime
from alwayson.runtime.local import LocalRuntime
from alwayson.runtime.local_processes import LocalProcesses, descendants
from alwayson.runtime.processes import read_pid_file
from alwayson.spec.models import Probe

# A tiny HTTP server on $PORT (SO_REUSEPORT, so a successor can bind beside it, as a
# gateway takes sockets over). Given --take-over PID it tells PID to go once it listens.
SERVE = r"""
import os, signal, socket, subprocess, sys
args = sys.argv[1:]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(os.environ["PORT"])))
sock.listen(16)
if "--take-over" in args:
    os.kill(int(args[args.index("--take-over") + 1]), signal.SIGTERM)
PREPARE
while True:
    conn, _ = sock.accept()
    try:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    finally:
        conn.close()
"""
PREPARE = {
    "serve": "",
    "stubborn": "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
    "child": (
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        "open('child.pid.tmp', 'w').write(str(child.pid)); os.replace('child.pid.tmp', "
        "'child.pid')"
    ),
}
OTHERS = {"never-ready": "import time; time.sleep(120)", "exit-3": "raise SystemExit(3)"}


class LocalHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.state = tmp_path / "state"
        self.runtimes: list[LocalRuntime] = []
        self.processes = LocalProcesses()

    def new_runtime(self) -> Runtime:
        runtime = LocalRuntime(self.state)
        self.runtimes.append(runtime)
        return runtime

    def spec(self, ident: str, program: Program) -> InstanceSpec:
        folder = self.root / ident
        folder.mkdir(exist_ok=True)
        prepare = PREPARE.get(program)
        code = OTHERS[program] if prepare is None else SERVE.replace("PREPARE", prepare)
        start_timeout = 0.6 if program == "never-ready" else 15.0
        port = free_port()
        return InstanceSpec(
            id=ident,
            kind=Kind.WORKLOAD,
            site="jakarta",
            service="svc",
            version="1",
            argv=[sys.executable, "-c", code],
            cwd=str(folder),
            env={"PYTHONUNBUFFERED": "1", "PORT": str(port)},
            host="127.0.0.1",
            port=port,
            readiness=Probe(http="/", interval=0.2, timeout=0.2, start_timeout=start_timeout),
            stop_grace=0.5,
        )

    def alive(self, pid: int) -> bool:
        return self.processes.alive(pid, None)

    def kill_outside(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # our child (the runtime started it): reaping a dead one is instant

    async def child_of(self, instance_id: str) -> int:
        return int((self.root / instance_id / "child.pid").read_text())

    async def clean_up(self) -> None:
        """Kill by pid everything a check may have left, checked against start times."""
        refs: set[tuple[int, float | None]] = set()
        for runtime in self.runtimes:
            refs |= {(s.pid, s.start_time) for s in runtime.statuses()}
            await runtime.close()
        for record in (self.state / "run" / "instances").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(record.read_text())
                refs.add((int(data["pid"]), float(data["start_time"])))
        for child_file in self.root.glob("*/child.pid"):
            with contextlib.suppress(OSError, ValueError):
                refs.add((int(child_file.read_text()), None))
        for pid, start_time in refs:
            self.processes.signal_tree(pid, start_time, signal.SIGKILL)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[LocalHarness]:
    made = LocalHarness(tmp_path)
    try:
        yield made
    finally:
        await made.clean_up()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_conformance(harness: LocalHarness, check: Check) -> None:
    await check(harness)


# ---------------------------------------------------------------- the processes port


async def test_local_processes_start_identify_and_kill_a_tree(tmp_path: Path) -> None:
    processes = LocalProcesses()
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(120)'], start_new_session=True); time.sleep(120)"
    )
    ref = processes.start_detached(
        [sys.executable, "-c", code], tmp_path / "runner.log", tmp_path / "runner.json"
    )
    try:
        assert read_pid_file(tmp_path / "runner.json") == ref
        assert processes.alive(ref.pid, ref.start_time)
        assert not processes.alive(ref.pid, ref.start_time + 5)
        assert os.getsid(ref.pid) == ref.pid  # its own session
        assert processes.signal_tree(ref.pid, ref.start_time + 5, signal.SIGKILL) == []
        assert not processes.signal(ref.pid, ref.start_time + 5, signal.SIGCONT)
        assert processes.signal(ref.pid, ref.start_time, signal.SIGCONT)
        await eventually("the runner's child", lambda: len(descendants(ref.pid)) == 1)
        (child,) = descendants(ref.pid)
        assert processes.signal_tree(ref.pid, ref.start_time, signal.SIGKILL) == [ref.pid, child]
        await eventually("both gone", lambda: not processes.alive(ref.pid, None))
        await eventually("child gone", lambda: not processes.alive(child, None))
    finally:
        processes.signal_tree(ref.pid, ref.start_time, signal.SIGKILL)
