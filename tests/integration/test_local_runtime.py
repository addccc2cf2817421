"""The local runtime with real processes: stop escalation, adoption, exit codes, probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support import free_port

from alwayson.runtime.base import (
    EventKind,
    InstanceSpec,
    InstanceStatus,
    Kind,
    Phase,
    RuntimeEvent,
)
from alwayson.runtime.local import LocalRuntime
from alwayson.spec.models import Probe

STUBBORN = (
    "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path('armed').touch(); time.sleep(120)"
)


def spec(ident: str, code: str, folder: Path, probe: Probe | None = None) -> InstanceSpec:
    return InstanceSpec(
        id=ident,
        kind=Kind.WORKLOAD,
        site="jakarta",
        service="svc",
        version="1",
        argv=[sys.executable, "-c", code],
        cwd=str(folder),
        env={"PYTHONUNBUFFERED": "1"},
        host="127.0.0.1",
        port=free_port(),
        readiness=probe or Probe(exec="true", interval=0.2, timeout=0.2),
        stop_grace=0.5,
    )


async def next_event(runtime: LocalRuntime, kind: EventKind, timeout: float = 15) -> RuntimeEvent:
    async with asyncio.timeout(timeout):
        while True:
            event = await runtime.events.get()
            if event.kind is kind:
                return event


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path / "state")
    yield rt
    pids = [s.pid for s in rt.statuses() if s.phase is not Phase.EXITED]
    await rt.close()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def test_exec_probe_makes_it_ready_and_exit_code_is_recorded(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    status = await runtime.start(
        spec("ok-1", "import time; time.sleep(0.8); raise SystemExit(7)", tmp_path)
    )
    assert (await next_event(runtime, EventKind.READY)).instance_id == "ok-1"
    exited = await next_event(runtime, EventKind.EXITED)
    assert exited.exit_code == 7 and exited.detail == "exited with code 7"
    assert status.phase is Phase.EXITED
    assert not (tmp_path / "state" / "run" / "instances" / "ok-1.json").exists()
    log = Path(runtime.log_path("jakarta", "ok-1")).read_text()
    assert "alwayson: starting ok-1" in log


async def test_stop_escalates_to_sigkill_after_the_grace_period(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    armed = Probe(exec="test -f armed", interval=0.2, timeout=0.2)
    status = await runtime.start(spec("stubborn-1", STUBBORN, tmp_path, armed))
    await next_event(runtime, EventKind.READY)  # ready = its SIGTERM handler is installed
    await runtime.stop("stubborn-1", grace=0.5)
    assert status.phase is Phase.EXITED
    assert status.exit_code == -signal.SIGKILL
    assert status.exit_reason == "killed by SIGKILL"


async def test_a_new_runtime_adopts_running_processes_without_restarting(
    tmp_path: Path,
) -> None:
    first = LocalRuntime(tmp_path / "state")
    status = await first.start(spec("adopt-1", "import time; time.sleep(120)", tmp_path))
    await next_event(first, EventKind.READY)
    await first.close()  # the controller goes away; the instance keeps running
    second = LocalRuntime(tmp_path / "state")
    try:
        adopted = await second.adopt()
        assert [(s.spec.id, s.pid, s.adopted, s.phase) for s in adopted] == [
            ("adopt-1", status.pid, True, Phase.READY)
        ]
        os.kill(status.pid, signal.SIGKILL)
        exited = await next_event(second, EventKind.EXITED)
        assert exited.exit_code is None
        assert "exit code unknown" in exited.detail
    finally:
        await second.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGKILL)


async def test_a_dead_pidfile_is_reported_not_adopted(tmp_path: Path) -> None:
    first = LocalRuntime(tmp_path / "state")
    status = await first.start(spec("gone-1", "import time; time.sleep(120)", tmp_path))
    await first.close()
    os.kill(status.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(status.pid, 0)  # noqa: ASYNC222 - reaping our own dead child is instant
    second = LocalRuntime(tmp_path / "state")
    try:
        assert await second.adopt() == []
        event = await next_event(second, EventKind.EXITED)
        assert event.instance_id == "gone-1" and "controller was down" in event.detail
    finally:
        await second.close()


async def test_start_timeout_is_reported(runtime: LocalRuntime, tmp_path: Path) -> None:
    never = Probe(exec="false", interval=0.2, timeout=0.2, start_timeout=0.6)
    await runtime.start(spec("never-1", "import time; time.sleep(120)", tmp_path, never))
    event = await next_event(runtime, EventKind.START_TIMEOUT)
    assert event.instance_id == "never-1" and "not ready 0.6s after start" in event.detail
    assert "exit 1" in event.detail


async def test_a_process_whose_launcher_died_before_recording_it_is_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller SIGKILLed between starting a process and writing its pid file left an
    orphan that held the address: the next controller could not start the instance and
    never adopted it. The launch intent and its marker find it."""

    class Died(Exception):
        pass

    launched: list[InstanceStatus] = []

    def dies(self: LocalRuntime, status: InstanceStatus) -> None:
        launched.append(status)
        raise Died  # the launcher is gone before the pid file is written

    first = LocalRuntime(tmp_path / "state")
    monkeypatch.setattr(LocalRuntime, "_write_pidfile", dies)
    with pytest.raises(Died):
        await first.start(spec("orphan-1", "import time; time.sleep(120)", tmp_path))
    monkeypatch.undo()
    await first.close()
    pid = launched[0].pid
    run = tmp_path / "state" / "run" / "instances"
    try:
        intent = json.loads((run / "orphan-1.launching").read_text())
        assert not (run / "orphan-1.json").exists()
        # An intent whose process never started is dropped, nothing adopted for it.
        never = {**intent, "marker": "0" * 24, "spec": {**intent["spec"], "id": "never-1"}}
        (run / "never-1.launching").write_text(json.dumps(never))
        second = LocalRuntime(tmp_path / "state")
        try:
            adopted = await second.adopt()
            assert [(s.spec.id, s.pid, s.adopted) for s in adopted] == [("orphan-1", pid, True)]
            assert sorted(p.name for p in run.iterdir()) == ["orphan-1.json"]
        finally:
            await second.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
