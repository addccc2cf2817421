"""Scheduled drills: due by cron in local time, started once, skipped while one runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from alwayson.control.drilling import DrillOps
from alwayson.runtime.memory import MemoryProcesses, MemoryRuntime, MemoryWorld
from alwayson.spec.loading import load_spec_text
from alwayson.store.memory import MemoryStore
from alwayson.util.clocks import ManualClock

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
drills:
  schedules:
    - scenario: instance-kill
      cron: "0 3 * * *"
      rate: 5
"""


class FakeController:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.state_dir = Path("/nonexistent")
        self.spec_value = load_spec_text(SPEC, Path("/x/alwayson.yaml"), check_commands=False).spec
        self.events: list[tuple[str, str, str]] = []

    def spec_or_none(self) -> Any:
        return self.spec_value

    async def record_event(self, kind: str, subject: str, message: str, data: Any = None) -> None:
        self.events.append((kind, subject, message))

    def wake(self) -> None:
        pass


def drill_ops(controller: FakeController) -> DrillOps:
    """DrillOps on its narrow ports: the fake is the event sink, waker and spec reader."""
    world = MemoryWorld(ManualClock())
    return DrillOps(
        controller.store,
        controller,
        controller,
        controller,  # type: ignore[arg-type]
        MemoryRuntime(world),
        MemoryProcesses(world),
        controller.state_dir,
        world.clock,
    )


def local(hour: int, minute: int = 0) -> float:
    return dt.datetime(2026, 11, 26, hour, minute).astimezone().timestamp()


def test_a_schedule_starts_its_drill_once_when_it_comes_due() -> None:
    controller = FakeController()
    ops = drill_ops(controller)
    started: list[dict[str, Any]] = []

    async def start(name: str, **kwargs: Any) -> dict[str, Any]:
        started.append({"scenario": name, **kwargs})
        return {}

    ops.start = start  # type: ignore[method-assign]

    async def go() -> None:
        ops.last_schedule_check = local(2, 58)
        await ops._due(local(2, 59))  # not yet
        assert started == []
        await ops._due(
            local(
                3,
                0,
            )
            + 0.4
        )  # 03:00 local time has passed
        await ops._due(local(3, 0) + 0.9)  # the next check: already started
        await ops._due(local(3, 1))

    asyncio.run(go())
    assert len(started) == 1
    assert started[0]["scenario"] == "instance-kill" and started[0]["rate"] == 5
    assert started[0]["actor"] == "schedule '0 3 * * *'"


def test_a_schedule_due_while_a_drill_runs_is_skipped_and_recorded() -> None:
    controller = FakeController()
    ops = drill_ops(controller)
    ops.active = {"id": "d1", "scenario": "site-loss"}

    async def go() -> None:
        ops.last_schedule_check = local(2, 59)
        await ops._due(local(3, 0) + 0.5)

    asyncio.run(go())
    ((kind, subject, message),) = controller.events
    assert kind == "drill-skipped" and subject == "instance-kill" and "d1" in message
