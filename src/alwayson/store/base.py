"""The ``StateStore`` protocol and the records it keeps.

Atomicity: ``compare_and_set`` must be atomic with respect to every other writer of the
same key, because leases and resumable state machines (releases, failovers) rely on it to
make sure two controllers never both believe they won. ``put`` is a plain overwrite and
``append_*`` must never lose or reorder an entry of one writer. Every method may raise
``TemporaryError`` when the backend cannot be reached; callers pass deadlines shorter than
any lease they protect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Versioned:
    value: dict[str, Any]
    version: int


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    subject: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int = 0


class StateStore(Protocol):
    async def get(self, key: str) -> Versioned | None: ...

    async def put(self, key: str, value: dict[str, Any]) -> int:
        """Overwrite; returns the new version."""
        ...

    async def compare_and_set(
        self, key: str, expected_version: int | None, value: dict[str, Any]
    ) -> bool:
        """Write only when the stored version is ``expected_version`` (None: key absent)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def list_prefix(self, prefix: str, limit: int = 1000) -> list[tuple[str, Versioned]]:
        """Keys starting with ``prefix``, in key order."""
        ...

    async def append_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(self, limit: int = 100) -> list[AuditEntry]: ...

    async def append_event(self, event: Event) -> None: ...

    async def list_events(self, limit: int = 100, kind: str | None = None) -> list[Event]: ...

    async def close(self) -> None: ...
