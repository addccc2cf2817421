"""The ``Runtime`` conformance suite: every driver must pass every check here.

Written like trio's ``check_one_way_stream``: each ``check_*`` takes a ``RuntimeHarness``
(a factory of runtimes over one shared state, plus the few things only the test's side of
the machine can do) and asserts the contract of ``alwayson.runtime.base.Runtime``. The unit
tests run it against ``MemoryRuntime``, the integration tests against ``LocalRuntime`` with
real processes; a new driver adds one harness and one test module.

Programs a harness must offer (``spec(ident, program)``):

- ``serve``: answers its readiness probe until signalled; default signal dispositions.
  Given ``--take-over PID`` it makes process PID hand over (exit), as a gateway does.
- ``stubborn``: like ``serve`` but ignores SIGTERM.
- ``never-ready``: runs, never answers; ``start_timeout`` 0.6 s.
- ``exit-3``: exits with code 3 right after starting.
- ``child``: like ``serve``, and starts a child in its own session (ready once it has).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, Protocol

import pytest

from alwayson.runtime.base import EventKind, InstanceSpec, Phase, Runtime, RuntimeEvent
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError

Program = Literal["serve", "stubborn", "never-ready", "exit-3", "child"]
EVENT_TIMEOUT = 15.0


class RuntimeHarness(Protocol):
    def new_runtime(self) -> Runtime:
        """A runtime over the harness's shared state; a second one is a restarted
        controller (the harness closes them all at the end)."""
        ...

    def spec(self, ident: str, program: Program) -> InstanceSpec: ...

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` runs (not a zombie), seen from outside any runtime."""
        ...

    def kill_outside(self, pid: int) -> None:
        """SIGKILL ``pid`` behind the runtime's back (and reap it if it is ours)."""
        ...

    async def child_of(self, instance_id: str) -> int:
        """The pid of the own-session child a ``child`` program started."""
        ...


Check = Callable[[RuntimeHarness], Awaitable[None]]


async def next_event(runtime: Runtime, kind: EventKind, ident: str) -> RuntimeEvent:
    """The next event of ``kind`` for ``ident``; others are passed over."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        while True:
            event = await runtime.events.get()
            if event.kind is kind and event.instance_id == ident:
                return event


async def kinds_seen(runtime: Runtime, ident: str, kinds: set[EventKind]) -> None:
    """Wait until one event of each of ``kinds`` arrived for ``ident``, in any order."""
    missing = set(kinds)
    async with asyncio.timeout(EVENT_TIMEOUT):
        while missing:
            event = await runtime.events.get()
            if event.instance_id == ident:
                missing.discard(event.kind)


async def eventually(what: str, condition: Callable[[], bool]) -> None:
    """Wait (bounded) for something outside any runtime's events, e.g. a pid to vanish;
    returns at once when it already holds, so in-memory runs never wait."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        turns = 0
        while not condition():
            turns += 1
            # A few loop turns first (all an in-memory runtime needs), then real time.
            await asyncio.sleep(0 if turns < 50 else 0.05)
    assert condition(), what


async def started_ready(runtime: Runtime, spec: InstanceSpec) -> int:
    status = await runtime.start(spec)
    await next_event(runtime, EventKind.READY, spec.id)
    return status.pid


# ---------------------------------------------------------------- the checks


async def check_start_reports_starting_then_ready(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    spec = harness.spec("ready-1", "serve")
    status = await runtime.start(spec)
    assert status.phase is Phase.STARTING and not status.ready and not status.adopted
    assert status.pid > 0 and status.start_time > 0
    assert harness.alive(status.pid)
    event = await next_event(runtime, EventKind.READY, "ready-1")
    assert event.data == {}
    assert runtime.status("ready-1") is status
    assert runtime.status("ready-1").phase is Phase.READY
    assert status.ready_since is not None and status.last_probe
    assert [s.spec.id for s in runtime.statuses()] == ["ready-1"]
    assert runtime.status("ready-1").spec == spec
    with pytest.raises(ConflictError):
        await runtime.start(spec)
    await runtime.stop("ready-1")


async def check_log_path_names_site_and_id(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    spec = harness.spec("logged-1", "serve")
    path = runtime.log_path(spec.site, spec.id)
    assert path == runtime.log_path(spec.site, spec.id)
    assert spec.site in path and path.endswith("logged-1.log")
    assert path != runtime.log_path(spec.site, "other-1")
    await started_ready(runtime, spec)
    assert "alwayson: starting logged-1" in Path(path).read_text()
    await runtime.stop("logged-1")


async def check_stop_is_expected_and_the_process_is_gone(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    pid = await started_ready(runtime, harness.spec("stop-1", "serve"))
    status = runtime.status("stop-1")
    await runtime.stop("stop-1")
    assert status.phase is Phase.EXITED
    exited = await next_event(runtime, EventKind.EXITED, "stop-1")
    assert exited.data["expected"] is True and exited.data["replaced"] is False
    assert runtime.statuses() == []
    with pytest.raises(NotFoundError):
        runtime.status("stop-1")
    await eventually(f"pid {pid} to be gone", lambda: not harness.alive(pid))
    assert "stop-1" not in runtime.usage()


async def check_stop_escalates_to_sigkill_after_grace(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    await started_ready(runtime, harness.spec("stubborn-1", "stubborn"))
    status = runtime.status("stubborn-1")
    await runtime.stop("stubborn-1", grace=0.5)
    assert status.exit_code == -signal.SIGKILL
    assert status.exit_reason == "killed by SIGKILL"
    exited = await next_event(runtime, EventKind.EXITED, "stubborn-1")
    assert exited.data["expected"] is True


async def check_kill_is_an_unexpected_exit_with_its_reason(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    pid = await started_ready(runtime, harness.spec("kill-1", "serve"))
    assert pid in await runtime.kill("kill-1", signal.SIGKILL)
    exited = await next_event(runtime, EventKind.EXITED, "kill-1")
    assert exited.data["expected"] is False
    assert exited.exit_code == -signal.SIGKILL and exited.detail == "killed by SIGKILL"
    # The exited instance stays visible until the controller forgets it.
    assert runtime.status("kill-1").phase is Phase.EXITED
    assert "kill-1" not in runtime.usage()
    with pytest.raises(NotFoundError):
        await runtime.kill("kill-1", signal.SIGKILL)
    runtime.forget("kill-1")
    assert runtime.statuses() == []


async def check_kill_tree_reaches_children_in_their_own_session(
    harness: RuntimeHarness,
) -> None:
    runtime = harness.new_runtime()
    pid = await started_ready(runtime, harness.spec("tree-1", "child"))
    child = await harness.child_of("tree-1")
    assert child != pid and harness.alive(child)
    signalled = await runtime.kill("tree-1", signal.SIGKILL, tree=True)
    assert pid in signalled and child in signalled
    await next_event(runtime, EventKind.EXITED, "tree-1")
    await eventually(f"child {child} to be gone", lambda: not harness.alive(child))


async def check_signal_reaches_the_process(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    await started_ready(runtime, harness.spec("sig-1", "serve"))
    await runtime.signal("sig-1", signal.SIGTERM)
    exited = await next_event(runtime, EventKind.EXITED, "sig-1")
    assert exited.data["expected"] is False
    assert exited.exit_code == -signal.SIGTERM and exited.detail == "killed by SIGTERM"
    with pytest.raises(NotFoundError):
        await runtime.signal("sig-1", signal.SIGTERM)


async def check_a_stopped_process_turns_unready_and_unhealthy(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    await started_ready(runtime, harness.spec("frozen-1", "serve"))
    await runtime.signal("frozen-1", signal.SIGSTOP)
    await kinds_seen(runtime, "frozen-1", {EventKind.UNREADY, EventKind.UNHEALTHY})
    assert runtime.status("frozen-1").phase is Phase.UNREADY
    await runtime.signal("frozen-1", signal.SIGCONT)
    await next_event(runtime, EventKind.READY, "frozen-1")
    await runtime.stop("frozen-1")


async def check_exit_code_is_reported(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    status = await runtime.start(harness.spec("exit-1", "exit-3"))
    exited = await next_event(runtime, EventKind.EXITED, "exit-1")
    assert exited.exit_code == 3 and exited.detail == "exited with code 3"
    assert exited.data["expected"] is False
    assert status.phase is Phase.EXITED and status.exit_reason == "exited with code 3"
    # An exited id may start again.
    runtime.forget("exit-1")
    await started_ready(runtime, harness.spec("exit-1", "serve"))
    await runtime.stop("exit-1")


async def check_start_timeout_is_reported(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    await runtime.start(harness.spec("never-1", "never-ready"))
    event = await next_event(runtime, EventKind.START_TIMEOUT, "never-1")
    assert "not ready 0.6s after start" in event.detail
    assert runtime.status("never-1").phase is Phase.STARTING
    await runtime.stop("never-1")


async def check_replace_hands_over_to_a_successor(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    spec = harness.spec("gw-1", "serve")
    old_pid = await started_ready(runtime, spec)
    new = await runtime.replace(spec, ["--take-over", str(old_pid)])
    assert new.pid != old_pid and runtime.status("gw-1") is new
    exited = await next_event(runtime, EventKind.EXITED, "gw-1")
    assert exited.data == {"expected": True, "replaced": True}
    await eventually(f"pid {old_pid} to be gone", lambda: not harness.alive(old_pid))
    await eventually("the successor to be ready", lambda: runtime.status("gw-1").ready)
    assert harness.alive(new.pid)
    await runtime.stop("gw-1")


async def check_a_failed_successor_leaves_the_old_process_serving(
    harness: RuntimeHarness,
) -> None:
    runtime = harness.new_runtime()
    old_pid = await started_ready(runtime, harness.spec("gw-2", "serve"))
    with pytest.raises(PermanentError, match="exited with code 3"):
        await runtime.replace(harness.spec("gw-2", "exit-3"), ["--take-over", str(old_pid)])
    status = runtime.status("gw-2")
    assert status.pid == old_pid and status.phase is Phase.READY and harness.alive(old_pid)
    await runtime.stop("gw-2")
    exits = [await next_event(runtime, EventKind.EXITED, "gw-2") for _ in range(2)]
    # The successor's death is reported as a crash of the id; the old one's stop is not.
    assert (exits[0].exit_code, exits[0].data["expected"]) == (3, False)
    assert exits[1].data["expected"] is True


async def check_a_second_runtime_adopts_without_restarting(harness: RuntimeHarness) -> None:
    first = harness.new_runtime()
    pid = await started_ready(first, harness.spec("adopt-1", "serve"))
    await first.close()  # the controller goes away; the instance keeps running
    assert harness.alive(pid)
    second = harness.new_runtime()
    adopted = await second.adopt()
    assert [(s.spec.id, s.pid, s.adopted, s.phase) for s in adopted] == [
        ("adopt-1", pid, True, Phase.READY)
    ]
    assert await second.adopt() == []  # already watched: nothing twice
    assert "adopt-1" in second.usage()
    harness.kill_outside(pid)
    exited = await next_event(second, EventKind.EXITED, "adopt-1")
    assert exited.exit_code is None and "exit code unknown" in exited.detail
    assert exited.data["expected"] is False


async def check_a_process_dead_while_down_is_reported_not_adopted(
    harness: RuntimeHarness,
) -> None:
    first = harness.new_runtime()
    spec = harness.spec("gone-1", "serve")
    pid = await started_ready(first, spec)
    await first.close()
    harness.kill_outside(pid)
    await eventually(f"pid {pid} to be gone", lambda: not harness.alive(pid))
    second = harness.new_runtime()
    assert await second.adopt() == []
    event = await next_event(second, EventKind.EXITED, "gone-1")
    assert "controller was down" in event.detail and event.data["expected"] is False
    assert InstanceSpec.from_json(event.data["spec"]) == spec
    assert await second.adopt() == []  # reported once
    assert second.events.empty()


async def check_usage_has_cpu_and_memory_of_running_instances(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    await started_ready(runtime, harness.spec("use-1", "serve"))
    usage = runtime.usage()
    assert set(usage) == {"use-1"}
    assert usage["use-1"].cpu_seconds >= 0.0 and usage["use-1"].rss_bytes > 0
    await runtime.stop("use-1")
    assert runtime.usage() == {}


async def check_unknown_ids_are_not_found(harness: RuntimeHarness) -> None:
    runtime = harness.new_runtime()
    with pytest.raises(NotFoundError):
        runtime.status("nobody")
    with pytest.raises(NotFoundError):
        await runtime.stop("nobody")
    with pytest.raises(NotFoundError):
        await runtime.signal("nobody", signal.SIGTERM)
    with pytest.raises(NotFoundError):
        await runtime.kill("nobody", signal.SIGKILL)
    runtime.forget("nobody")  # forgetting what is not there is not an error
    assert runtime.statuses() == [] and runtime.usage() == {}


CHECKS: list[Check] = [
    check_start_reports_starting_then_ready,
    check_log_path_names_site_and_id,
    check_stop_is_expected_and_the_process_is_gone,
    check_stop_escalates_to_sigkill_after_grace,
    check_kill_is_an_unexpected_exit_with_its_reason,
    check_kill_tree_reaches_children_in_their_own_session,
    check_signal_reaches_the_process,
    check_a_stopped_process_turns_unready_and_unhealthy,
    check_exit_code_is_reported,
    check_start_timeout_is_reported,
    check_replace_hands_over_to_a_successor,
    check_a_failed_successor_leaves_the_old_process_serving,
    check_a_second_runtime_adopts_without_restarting,
    check_a_process_dead_while_down_is_reported_not_adopted,
    check_usage_has_cpu_and_memory_of_running_instances,
    check_unknown_ids_are_not_found,
]
