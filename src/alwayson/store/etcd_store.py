"""The :class:`~alwayson.store.base.StateStore` on etcd, over any
:class:`~alwayson.store.etcd_types.EtcdClient`: the real one (``store/etcd.py``) or the
in-memory one (``store/memory_etcd.py``), so unit tests need no gRPC."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from alwayson.store.base import AuditEntry, Event, Versioned
from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdClient,
    GuardFailed,
    Kv,
    Op,
    Put,
    Read,
    holds,
)


class EtcdStore:
    """The :class:`~alwayson.store.base.StateStore` on etcd, every key under ``root``.

    A key's version is etcd's own per-key version (1 after its first put);
    ``compare_and_set`` is one transaction comparing it. Audit entries and events are
    keys named by time and a random suffix, so writers in several sites never collide.

    ``guard``, when given, returns conditions that every write must also meet, checked by
    etcd in the same transaction (the leader controller's term: see
    ``control/leadership.py``); a write whose guard fails raises :class:`GuardFailed` and
    changes nothing. The guard's keys are outside ``root`` and named in full.
    """

    def __init__(
        self,
        etcd: EtcdClient,
        root: str,
        guard: Callable[[], Sequence[Compare]] | None = None,
    ) -> None:
        self.etcd = etcd
        self.root = root.rstrip("/") + "/"
        self.guard = guard

    def key(self, key: str) -> str:
        return self.root + key

    async def get(self, key: str) -> Versioned | None:
        found = await self.etcd.get(self.key(key))
        return Versioned(found.json(), found.version) if found else None

    async def _guarded(self, compare: list[Compare], ops: list[Op], full: str) -> Kv | None:
        """Run ``ops`` if ``compare`` and the guard hold; the written key as it is after,
        None when ``compare`` failed. Raises GuardFailed when the guard did."""
        guard = list(self.guard()) if self.guard is not None else []
        ok, reads, _ = await self.etcd.txn(
            [*guard, *compare], [*ops, Read(full)], [Read(c.key) for c in guard]
        )
        if ok:
            return reads[-1][0] if reads[-1] else None
        for condition, found in zip(guard, reads, strict=True):
            if not holds(condition, found[0] if found else None):
                raise GuardFailed(f"etcd refused a write to {full}: {condition.key} changed")
        return None

    async def put(self, key: str, value: dict[str, Any]) -> int:
        if self.guard is None:
            version, _ = await self.etcd.put(self.key(key), _dump(value))
            return version
        full = self.key(key)
        written = await self._guarded([], [Put(full, _dump(value))], full)
        return written.version if written else 0

    async def compare_and_set(
        self, key: str, expected_version: int | None, value: dict[str, Any]
    ) -> bool:
        full = self.key(key)
        compare = [Compare(full, "version", expected_version or 0)]
        return await self._guarded(compare, [Put(full, _dump(value))], full) is not None

    async def delete(self, key: str) -> None:
        if self.guard is None:
            await self.etcd.delete(self.key(key))
            return
        full = self.key(key)
        await self._guarded([], [Delete(full)], full)

    async def list_prefix(self, prefix: str, limit: int = 1000) -> list[tuple[str, Versioned]]:
        if limit <= 0:
            return []
        found = await self.etcd.range(self.key(prefix), limit=limit)
        cut = len(self.root)
        return [(kv.key[cut:], Versioned(kv.json(), kv.version)) for kv in found]

    async def _append(self, kind: str, body: dict[str, Any]) -> None:
        full = self.key(f"{kind}/{time.time_ns():020d}-{secrets.token_hex(3)}")
        if self.guard is None:
            await self.etcd.put(full, _dump(body))
        else:
            await self._guarded([], [Put(full, _dump(body))], full)

    async def _newest(self, kind: str, limit: int) -> list[Kv]:
        if limit <= 0:  # etcd reads a limit of 0 as "no limit"
            return []
        return await self.etcd.range(self.key(f"{kind}/"), limit=limit, newest_first=True)

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._append(
            "audit",
            {"at": entry.at, "actor": entry.actor, "action": entry.action, "detail": entry.detail},
        )

    async def list_audit(self, limit: int = 100) -> list[AuditEntry]:
        found = await self._newest("audit", limit)
        out = []
        for kv in found:
            d = kv.json()
            out.append(
                AuditEntry(d["at"], d["actor"], d["action"], d["detail"], kv.create_revision)
            )
        return out

    async def append_event(self, event: Event) -> None:
        body = {
            "at": event.at,
            "kind": event.kind,
            "subject": event.subject,
            "message": event.message,
            "data": event.data,
        }
        await self._append("events", body)

    async def list_events(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        # Filtering by kind reads further back: events of one kind are a share of all.
        found = await self._newest("events", limit if kind is None else max(limit * 20, 1000))
        out: list[Event] = []
        for kv in found:
            d = kv.json()
            if kind is not None and d["kind"] != kind:
                continue
            out.append(
                Event(d["at"], d["kind"], d["subject"], d["message"], d["data"], kv.create_revision)
            )
            if len(out) >= limit:
                break
        return out

    async def close(self) -> None:
        await self.etcd.close()


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
