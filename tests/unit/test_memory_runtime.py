"""``MemoryRuntime`` passes the runtime conformance suite, and its test hooks do what the
controller's tests will rely on (grace and probe thresholds on the manual clock)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conformance.runtimes import CHECKS, Check, Program, next_event

from alwayson.runtime.base import EventKind, InstanceSpec, Kind, Phase, Runtime, Usage
from alwayson.runtime.memory import Behaviour, MemoryProcesses, MemoryRuntime, MemoryWorld
from alwayson.runtime.processes import ProcessRef, read_pid_file
from alwayson.spec.models import Probe
from alwayson.util.clocks import ManualClock


def make_spec(ident: str, probe: Probe | None = None, stop_grace: float = 0.5) -> InstanceSpec:
    return InstanceSpec(
        id=ident,
        kind=Kind.WORKLOAD,
        site="jakarta",
        service="svc",
        version="1",
        argv=["fake-service"],
        cwd="/nonexistent",
        env={},
        host="127.0.0.1",
        port=8000,
        readiness=probe or Probe(http="/healthz", interval=0.2, timeout=0.2),
        stop_grace=stop_grace,
    )


class MemoryHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock(autojump=True)
        self.world = MemoryWorld(self.clock, log_dir=tmp_path / "logs")
        self.runtimes: list[MemoryRuntime] = []

    def new_runtime(self) -> Runtime:
        runtime = MemoryRuntime(self.world)
        self.runtimes.append(runtime)
        return runtime

    def spec(self, ident: str, program: Program) -> InstanceSpec:
        behaviours = {
            "serve": Behaviour(),
            "stubborn": Behaviour(ignores_sigterm=True),
            "never-ready": Behaviour(ready=False),
            "exit-3": Behaviour(dies_at_start=3),
            "child": Behaviour(children_in_own_session=1),
        }
        self.world.behaviours[ident] = behaviours[program]
        probe = Probe(http="/healthz", interval=0.2, timeout=0.2)
        if program == "never-ready":
            probe = Probe(http="/healthz", interval=0.2, timeout=0.2, start_timeout=0.6)
        return make_spec(ident, probe)

    def alive(self, pid: int) -> bool:
        return self.world.alive(pid)

    def kill_outside(self, pid: int) -> None:
        self.world.deliver(pid, signal.SIGKILL)

    async def child_of(self, instance_id: str) -> int:
        (child,) = self.world.children_of(self.world.process_of(instance_id).pid)
        return child


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MemoryHarness]:
    made = MemoryHarness(tmp_path)
    yield made
    for runtime in made.runtimes:
        await runtime.close()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_conformance(harness: MemoryHarness, check: Check) -> None:
    await check(harness)


# ---------------------------------------------------------------- on a clock that waits


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def world(clock: ManualClock, tmp_path: Path) -> MemoryWorld:
    return MemoryWorld(clock, log_dir=tmp_path / "logs")


@pytest.fixture
async def runtime(world: MemoryWorld) -> AsyncIterator[MemoryRuntime]:
    rt = MemoryRuntime(world)
    yield rt
    await rt.close()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_ready_comes_on_the_next_loop_turn_without_moving_the_clock(
    runtime: MemoryRuntime, clock: ManualClock
) -> None:
    status = await runtime.start(make_spec("a-1"))
    assert status.phase is Phase.STARTING
    event = await next_event(runtime, EventKind.READY, "a-1")
    assert event.detail == "answered" and clock.monotonic() == 1000.0


async def test_what_takes_no_time_does_not_move_a_jumping_clock(tmp_path: Path) -> None:
    clock = ManualClock(autojump=True)
    runtime = MemoryRuntime(MemoryWorld(clock))
    await runtime.start(make_spec("a-1", stop_grace=10.0))
    await next_event(runtime, EventKind.READY, "a-1")
    await runtime.stop("a-1")
    assert clock.monotonic() == 1000.0  # neither the start timeout nor the grace elapsed
    await runtime.close()


async def test_stop_waits_the_grace_on_the_clock_before_sigkill(
    runtime: MemoryRuntime, world: MemoryWorld, clock: ManualClock
) -> None:
    world.behave("a-1", ignores_sigterm=True)
    await runtime.start(make_spec("a-1", stop_grace=10.0))
    stopping = asyncio.ensure_future(runtime.stop("a-1"))
    await settle()
    clock.advance(9.9)
    await settle()
    assert not stopping.done() and world.process_of("a-1").signals == [signal.SIGTERM]
    clock.advance(0.1)
    await asyncio.wait_for(stopping, 1)
    assert runtime.statuses() == []
    exited = await next_event(runtime, EventKind.EXITED, "a-1")
    assert exited.detail == "killed by SIGKILL" and exited.data["expected"] is True


async def test_a_draining_process_exits_zero_on_sigterm(
    runtime: MemoryRuntime, world: MemoryWorld
) -> None:
    world.behave("a-1", term_exit_code=0)
    status = await runtime.start(make_spec("a-1"))
    await runtime.stop("a-1")
    assert status.exit_code == 0 and status.exit_reason == "exited with code 0"


async def test_readiness_flips_after_the_failure_threshold_on_the_clock(
    runtime: MemoryRuntime, world: MemoryWorld, clock: ManualClock
) -> None:
    await runtime.start(make_spec("a-1"))  # interval 0.2 s, failure threshold 3
    await next_event(runtime, EventKind.READY, "a-1")
    world.set_ready("a-1", False)
    await settle()
    clock.advance(0.5)
    await settle()
    assert runtime.events.empty() and runtime.status("a-1").ready
    clock.advance(0.1)
    assert (await next_event(runtime, EventKind.UNREADY, "a-1")).detail == "refused"
    world.set_ready("a-1", True)
    await settle()
    clock.advance(0.2)
    await next_event(runtime, EventKind.READY, "a-1")


async def test_its_own_liveness_probe_fails_apart_from_readiness(
    runtime: MemoryRuntime, world: MemoryWorld, clock: ManualClock
) -> None:
    probe = Probe(http="/healthz", interval=0.2, timeout=0.2)
    spec = make_spec("a-1", probe)
    spec = InstanceSpec(**{**spec.__dict__, "liveness": Probe(tcp=True, failure_threshold=2)})
    await runtime.start(spec)
    await next_event(runtime, EventKind.READY, "a-1")
    world.set_live("a-1", False)
    await settle()
    clock.advance(0.4)
    event = await next_event(runtime, EventKind.UNHEALTHY, "a-1")
    assert "liveness failed 2 times" in event.detail
    assert runtime.status("a-1").ready  # readiness still answers


async def test_crash_hook_is_an_unexpected_exit_and_usage_is_settable(
    runtime: MemoryRuntime, world: MemoryWorld
) -> None:
    await runtime.start(make_spec("a-1"))
    world.set_usage("a-1", 1.5, 1024)
    assert runtime.usage() == {"a-1": Usage(1.5, 1024)}
    world.crash("a-1", 2)
    exited = await next_event(runtime, EventKind.EXITED, "a-1")
    assert (exited.exit_code, exited.data["expected"]) == (2, False)


async def test_a_start_error_is_permanent(runtime: MemoryRuntime, world: MemoryWorld) -> None:
    from alwayson.util.errors import PermanentError

    world.behave("a-1", start_error="no such file")
    with pytest.raises(PermanentError, match="no such file"):
        await runtime.start(make_spec("a-1"))
    assert runtime.statuses() == []


async def test_a_stopped_process_dies_of_sigterm_only_when_continued(
    runtime: MemoryRuntime, world: MemoryWorld
) -> None:
    await runtime.start(make_spec("a-1"))
    await runtime.signal("a-1", signal.SIGSTOP)
    await runtime.signal("a-1", signal.SIGTERM)
    await settle()
    assert runtime.status("a-1").phase is not Phase.EXITED
    await runtime.signal("a-1", signal.SIGCONT)
    exited = await next_event(runtime, EventKind.EXITED, "a-1")
    assert exited.detail == "killed by SIGTERM"


async def test_pids_are_unique_across_runtimes(world: MemoryWorld) -> None:
    first, second = MemoryRuntime(world), MemoryRuntime(world)
    a = await first.start(make_spec("a-1"))
    b = await second.start(make_spec("b-1"))
    assert a.pid != b.pid
    await first.close()
    await second.close()


# ---------------------------------------------------------------- processes port


async def test_memory_processes_start_signal_and_identify(
    world: MemoryWorld, tmp_path: Path
) -> None:
    processes = MemoryProcesses(world)
    ref = processes.start_detached(["runner"], tmp_path / "drill.log", tmp_path / "runner.json")
    assert read_pid_file(tmp_path / "runner.json") == ref
    assert processes.alive(ref.pid, ref.start_time)
    assert not processes.alive(ref.pid, ref.start_time + 5)
    child = world.spawn(["postgres"], parent=ref.pid)
    assert processes.signal_tree(ref.pid, ref.start_time + 5, signal.SIGKILL) == []
    assert not processes.signal(ref.pid, ref.start_time + 5, signal.SIGCONT)
    assert processes.signal(ref.pid, ref.start_time, signal.SIGCONT)
    assert processes.signal_tree(ref.pid, None, signal.SIGKILL) == [ref.pid, child.pid]
    assert not processes.alive(ref.pid, None) and not processes.alive(child.pid, None)


def test_read_pid_file_reads_ours_and_postgres(tmp_path: Path) -> None:
    ours = tmp_path / "runner.json"
    ours.write_text('{"pid": 42, "start_time": 1.5}')
    postmaster = tmp_path / "postmaster.pid"
    postmaster.write_text("4242\n/var/lib/pg\n1700000000\n5432\n")
    assert read_pid_file(ours) == ProcessRef(42, 1.5)
    assert read_pid_file(postmaster) == ProcessRef(4242, 0.0)
    assert read_pid_file(tmp_path / "absent") is None
