"""The controller's ports as unit tests hold them: one fake that is the event sink, waker,
spawner, scaler, saver, status view, drill history and state reader a part is given."""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from alwayson.control.controller import Controller
from alwayson.control.observing import Observatory
from alwayson.control.ports import DatabaseReports
from alwayson.control.routing import Table
from alwayson.control.state import PlatformState
from alwayson.runtime.base import InstanceStatus
from alwayson.runtime.memory import MemoryProcesses, MemoryRuntime, MemoryWorld
from alwayson.spec.models import PlatformSpec
from alwayson.store.memory import MemoryStore
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import NotFoundError

Obs = TypeVar("Obs", bound=Observatory)


class Parts:
    def __init__(self, spec: PlatformSpec | None, statuses: Iterable[InstanceStatus] = ()) -> None:
        self.spec_value = spec
        self.statuses = list(statuses)
        self.events: list[tuple[str, str, str]] = []
        self.woken = 0
        self.saved = 0
        self.scaled: list[tuple[str, str, int]] = []
        self.spawned: list[Coroutine[Any, Any, object]] = []

    def spec_or_none(self) -> PlatformSpec | None:
        return self.spec_value

    def spec(self) -> PlatformSpec:
        if self.spec_value is None:
            raise NotFoundError("nothing is applied")
        return self.spec_value

    def spec_folder(self) -> Path:
        return Path(".")

    def state(self) -> PlatformState:
        return PlatformState(now=0.0, loaded=None, statuses=tuple(self.statuses))

    async def record_event(
        self, kind: str, subject: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        self.events.append((kind, subject, message))

    def wake(self) -> None:
        self.woken += 1

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        coro.close()  # nothing a unit test waits for
        self.spawned.append(coro)

    async def autoscale(self, service: str, site: str, replicas: int) -> None:
        self.scaled.append((service, site, replicas))

    async def save_state(self) -> None:
        self.saved += 1

    def status(self) -> dict[str, Any]:
        return {"instances": [], "sites": [], "services": []}

    def recent(self) -> list[dict[str, Any]]:
        return []


class NoDatabases:
    async def status(self) -> list[dict[str, Any]]:
        return []

    async def backups(self, db: str) -> list[dict[str, Any]]:
        return []


def observatory(
    parts: Parts,
    state_dir: Path,
    databases: DatabaseReports | None = None,
    cls: type[Obs] = Observatory,  # type: ignore[assignment]
) -> Obs:
    """An Observatory on ``parts``' ports, a memory runtime and a manual clock."""
    clock = ManualClock()
    return cls(
        MemoryStore(),
        clock,
        parts,
        MemoryRuntime(MemoryWorld(clock)),
        parts,
        parts,
        parts,
        parts,
        databases or NoDatabases(),
        parts,
        state_dir,
    )


class NoGateways:
    """Gateways that take every table pushed to them (the controller's RoutePusher port)."""

    async def push(self, admin: str, table: Table) -> None:
        pass

    async def close(self) -> None:
        pass


async def memory_controller(tmp_path: Path, store: MemoryStore | None = None) -> Controller:
    """A real Controller on the in-memory store, runtime and clock, state in
    ``tmp_path/.alwayson``, loaded (nothing applied yet)."""
    clock = ManualClock(autojump=True)
    world = MemoryWorld(clock, log_dir=tmp_path / "logs")
    controller = Controller(
        store or MemoryStore(),
        MemoryRuntime(world),
        MemoryProcesses(world),
        tmp_path / ".alwayson",
        clock,
        NoGateways(),
        None,
        address_free=lambda host, port: True,
    )
    await controller.load()
    return controller
