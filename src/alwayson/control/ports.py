"""The narrow ports the controller's parts are given instead of the controller itself.

A part (releases, databases, drills, observing, instances) never holds the controller or
reaches into another part's attributes: it is given the few of these it needs, and what it
wants changed in the shared state it returns as an intent that the controller applies.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from alwayson.control.state import PlatformState
    from alwayson.data.board import Board
    from alwayson.metrics.model import Point
    from alwayson.metrics.promql import QueryEngine
    from alwayson.spec.models import PlatformSpec
    from alwayson.store.base import StateStore
    from alwayson.store.etcd_types import MemberAdmin

LabelFilter = Callable[[str, Mapping[str, str]], bool]


class EventSink(Protocol):
    """Where a part records what it did (the store's event log)."""

    async def record_event(
        self, kind: str, subject: str, message: str, data: dict[str, Any] | None = None
    ) -> None: ...


class Waker(Protocol):
    """Asks for a reconcile turn soon (something the next snapshot depends on changed)."""

    def wake(self) -> None: ...


class SpecReader(Protocol):
    """The applied spec, if any, and the folder it was applied from."""

    def spec_or_none(self) -> PlatformSpec | None: ...

    def spec(self) -> PlatformSpec:
        """The applied spec; raises NotFoundError when nothing is applied."""
        ...

    def spec_folder(self) -> Path: ...


class Boards(Protocol):
    """The databases' shared keys on etcd for a spec: the lease board and a store view."""

    def board(self, spec: PlatformSpec) -> Board: ...

    def keys(self, spec: PlatformSpec) -> StateStore: ...

    def cluster(self, spec: PlatformSpec) -> MemberAdmin:
        """The spec's etcd cluster, for membership changes."""
        ...

    async def close(self) -> None: ...


class StateReader(SpecReader, Protocol):
    """A frozen view of the whole platform as of now."""

    def state(self) -> PlatformState: ...


class Spawner(Protocol):
    """Runs a coroutine in the background, owned (awaited at shutdown) by the controller."""

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None: ...


class Publisher(Protocol):
    """Routing tables: push what changed, and tell whether an instance is still routed."""

    async def publish(self) -> None: ...

    def still_routed(self, instance_id: str) -> bool: ...

    def forget(self, instance_id: str) -> None:
        """``instance_id``'s process changed: push its next table whatever it held."""
        ...


class Saver(Protocol):
    """Persists the desired state (spec, drift, release versions) in one write."""

    async def save_state(self) -> None: ...


class Figures(Protocol):
    """What the observe loop scraped into the metrics store, and a fresh round on demand."""

    async def refresh(self) -> float:
        """Scrape now; the time of that round once it is in the store."""
        ...

    def last_round(self) -> float | None:
        """When the last round was stored (None: none yet)."""
        ...

    def query(self, expr: str, at: float) -> list[Point]: ...

    def engine_for(self, keep: LabelFilter) -> QueryEngine:
        """A PromQL engine over only the series ``keep`` accepts (name, labels)."""
        ...


class StatusView(Protocol):
    """What ``alwayson status`` shows (``statuses.status_view`` of the latest snapshot)."""

    def status(self) -> dict[str, Any]: ...


class Scaler(Protocol):
    """Takes the autoscaler's decision for one service in one site."""

    async def autoscale(self, service: str, site: str, replicas: int) -> None: ...


class DatabaseReports(Protocol):
    """What the site agents last reported of each database, and its backups."""

    async def status(self) -> list[dict[str, Any]]: ...

    async def backups(self, db: str) -> list[dict[str, Any]]: ...


class DrillHistory(Protocol):
    def recent(self) -> list[dict[str, Any]]: ...
