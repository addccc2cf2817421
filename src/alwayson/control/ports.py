"""The narrow ports the controller's parts are given instead of the controller itself.

A part (releases, databases, drills, observing, instances) never holds the controller or
reaches into another part's attributes: it is given the few of these it needs, and what it
wants changed in the shared state it returns as an intent that the controller applies.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from alwayson.control.state import PlatformState
    from alwayson.spec.models import PlatformSpec


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
