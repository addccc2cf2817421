"""An in-memory ``StateStore`` for tests of the layers above."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from alwayson.store.base import AuditEntry, Event, Versioned


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, Versioned] = {}
        self._audit: list[AuditEntry] = []
        self._events: list[Event] = []

    async def get(self, key: str) -> Versioned | None:
        item = self._data.get(key)
        return None if item is None else Versioned(copy.deepcopy(item.value), item.version)

    async def put(self, key: str, value: dict[str, Any]) -> int:
        version = self._data[key].version + 1 if key in self._data else 1
        self._data[key] = Versioned(copy.deepcopy(value), version)
        return version

    async def compare_and_set(
        self, key: str, expected_version: int | None, value: dict[str, Any]
    ) -> bool:
        current = self._data.get(key)
        if (current.version if current else None) != expected_version:
            return False
        await self.put(key, value)
        return True

    async def list_prefix(self, prefix: str, limit: int = 1000) -> list[tuple[str, Versioned]]:
        keys = sorted(k for k in self._data if k.startswith(prefix))[:limit]
        return [
            (k, Versioned(copy.deepcopy(self._data[k].value), self._data[k].version)) for k in keys
        ]

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def append_audit(self, entry: AuditEntry) -> None:
        self._audit.append(
            replace(entry, id=len(self._audit) + 1, detail=copy.deepcopy(entry.detail))
        )

    async def list_audit(self, limit: int = 100) -> list[AuditEntry]:
        return list(reversed(self._audit))[:limit]

    async def append_event(self, event: Event) -> None:
        self._events.append(
            replace(event, id=len(self._events) + 1, data=copy.deepcopy(event.data))
        )

    async def list_events(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        picked = [e for e in reversed(self._events) if kind is None or e.kind == kind]
        return picked[:limit]

    async def close(self) -> None:
        return None
