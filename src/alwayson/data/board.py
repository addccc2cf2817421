"""The database lease and the agents' shared keys, on etcd (docs/DATA-DESIGN.md).

Every agent and the controller use this board; nothing judges leases on their behalf.
Keys, under the platform's root:

- ``db/<n>/lease``: the lease record (:class:`~alwayson.data.leases.Lease` as JSON);
  survives every expiry
- ``db/<n>/holder``: ``{"site", "epoch", "lease_id"}``, attached to etcd lease
  ``lease_id``: it exists exactly while the holder's tenure may be live
- ``db/<n>/site/<site>``: the last status an agent reported
- ``db/<n>/request``: an operator's request (switchover, failback, backup…) to the agents
- ``db/<n>/record/<id>``, ``db/<n>/backup/<id>``, ``db/<n>/restore/<id>``: records
- ``events/…``: events for ``alwayson events`` (the controller files them)

Liveness is etcd's: the lease is live while the holder key exists with the record's site
and epoch. The pure rules of ``data/leases.py`` are fed a lease whose ``expires_at`` is
made on read: live, ``now + ttl``; gone, when this board first saw it gone (so a
takeover's record can tell when the old holder's last renewal was: that minus ttl).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from alwayson.data import leases
from alwayson.data.leases import Lease, LeaseRefused
from alwayson.store.base import Event
from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Kv,
    Op,
    Put,
    Read,
)
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError

log = logging.getLogger("alwayson.board")

ATTEMPTS = 4


@dataclass(frozen=True)
class Holder:
    site: str
    epoch: int
    lease_id: int
    mod_revision: int


@dataclass(frozen=True)
class Snapshot:
    """The lease record and the holder key, read in one transaction."""

    record: Lease | None
    record_version: int
    holder: Holder | None

    def live(self) -> bool:
        r, h = self.record, self.holder
        return r is not None and h is not None and (h.site, h.epoch) == (r.holder, r.epoch)


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Board:
    """The lease operations and shared keys of every database of one platform."""

    def __init__(self, etcd: EtcdClient, root: str, clock: Clock) -> None:
        self.etcd = etcd
        self.root = root.rstrip("/") + "/"
        self.clock = clock
        self.gone_seen: dict[tuple[str, int], float] = {}
        """(db, epoch) -> when this board first saw that epoch's holder key gone."""

    # -- keys ------------------------------------------------------------------------------

    def key(self, db: str, *parts: str) -> str:
        return self.root + "/".join(("db", db, *parts))

    # -- reading ---------------------------------------------------------------------------

    async def snapshot(self, db: str, timeout: float | None = None) -> Snapshot:
        _, reads, _ = await self.etcd.txn(
            [], [Read(self.key(db, "lease")), Read(self.key(db, "holder"))], timeout=timeout
        )
        return self._snapshot(reads[0], reads[1])

    def _snapshot(self, record_kvs: list[Kv], holder_kvs: list[Kv]) -> Snapshot:
        record = Lease.from_json(record_kvs[0].json()) if record_kvs else None
        holder = None
        if holder_kvs:
            h = holder_kvs[0].json()
            holder = Holder(
                h["site"], int(h["epoch"]), int(h["lease_id"]), holder_kvs[0].mod_revision
            )
        return Snapshot(record, record_kvs[0].version if record_kvs else 0, holder)

    def shown(self, db: str, snap: Snapshot, now: float) -> Lease | None:
        """The record as the pure rules read it: ``expires_at`` from the holder key."""
        record = snap.record
        if record is None:
            return None
        if snap.live():
            return replace(record, expires_at=now + record.ttl)
        if record.holder is None:  # released or revoked-and-gone: the record's own time
            return replace(record, expires_at=min(record.expires_at, now))
        seen = self.gone_seen.setdefault((db, record.epoch), now)
        return replace(record, expires_at=seen)

    async def read_lease(self, db: str, timeout: float | None = None) -> Lease | None:
        snap = await self.snapshot(db, timeout)
        return self.shown(db, snap, self.clock.wall())

    async def view(self, db: str, sites: list[str], timeout: float = 1.5) -> dict[str, Any]:
        """The lease, the sites' reports and the pending request, in one read."""
        reads: list[Op] = [Read(self.key(db, "lease")), Read(self.key(db, "holder"))]
        reads += [Read(self.key(db, "site", s)) for s in sites]
        reads.append(Read(self.key(db, "request")))
        _, found, _ = await self.etcd.txn([], reads, timeout=timeout)
        now = self.clock.wall()
        lease = self.shown(db, self._snapshot(found[0], found[1]), now)
        statuses = {s: kvs[0].json() for s, kvs in zip(sites, found[2:-1], strict=True) if kvs}
        request = found[-1][0].json() if found[-1] else None
        return {
            "lease": lease.to_json() if lease else None,
            "now": now,
            "sites": statuses,
            "request": request,
        }

    # -- the lease -------------------------------------------------------------------------

    async def lease(
        self,
        db: str,
        op: str,
        site: str,
        epoch: int,
        ttl: float,
        timeout: float,
        to: str | None = None,
        sync: str | None = None,
        synchronous: bool = False,
        why: str = "",
        fault_at: float | None = None,
    ) -> Lease:
        """One lease operation (``renew``, ``acquire``, ``release``, ``handover``,
        ``reclaim``); raises LeaseRefused as the rules say, TemporaryError when etcd cannot
        be reached."""
        deadline = self.clock.monotonic() + timeout

        def left() -> float:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise TemporaryError(f"{db}: lease {op}: out of time")
            return remaining

        if op == "renew":
            return await self._renew(db, site, epoch, ttl, sync, synchronous, left)
        if op == "acquire":
            return await self._acquire(db, site, ttl, synchronous, left)
        if op == "release":
            return await self._release(db, site, epoch, why, fault_at, left)
        if op == "handover" and to:
            return await self._hand_over(db, site, epoch, to, ttl, fault_at, left)
        if op == "reclaim":
            return await self._reclaim(db, site, epoch, ttl, left)
        raise ValueError(f"no lease operation {op!r}")

    async def _renew(
        self,
        db: str,
        site: str,
        epoch: int,
        ttl: float,
        sync: str | None,
        synchronous: bool,
        left: Callable[[], float],
    ) -> Lease:
        for _ in range(ATTEMPTS):
            snap = await self.snapshot(db, left())
            now = self.clock.wall()
            new = leases.renew(self.shown(db, snap, now), site, epoch, ttl, now, synchronous, sync)
            assert snap.holder is not None and snap.record is not None
            granted = await self.etcd.keep_alive(snap.holder.lease_id, left())
            if granted <= 0:
                raise LeaseRefused("lease expired before the renewal arrived", snap.record)
            if granted < ttl:
                # The agent's tenure runs ttl from this renewal: the key must outlive it.
                # (A ttl raised in the spec, or an old etcd lease: take a new one.)
                raise LeaseRefused(
                    f"the etcd lease lasts {granted}s, less than the ttl {ttl:g}s", snap.record
                )
            changed = (snap.record.synchronous, snap.record.sync_standby, snap.record.ttl) != (
                new.synchronous,
                new.sync_standby,
                new.ttl,
            )
            if not changed:
                return new
            # Who may take over is written before the primary relies on it (it stops
            # waiting for its standby only after this returns).
            ok, _, _ = await self.etcd.txn(
                [
                    Compare(self.key(db, "holder"), "mod", snap.holder.mod_revision),
                    Compare(self.key(db, "lease"), "version", snap.record_version),
                ],
                [Put(self.key(db, "lease"), _dump(self._stored(new)))],
                timeout=left(),
            )
            if ok:
                return new
        raise TemporaryError(f"{db}: the lease changed {ATTEMPTS} times during a renewal")

    @staticmethod
    def _stored(lease: Lease) -> dict[str, Any]:
        """The record as kept: ``expires_at`` only says when it was last granted + ttl."""
        return lease.to_json()

    async def _acquire(
        self, db: str, site: str, ttl: float, synchronous: bool, left: Callable[[], float]
    ) -> Lease:
        snap = await self.snapshot(db, left())
        now = self.clock.wall()
        new = leases.acquire(self.shown(db, snap, now), site, ttl, now, synchronous)
        lease_id = await self.etcd.grant(ttl, left())
        holder = {"site": site, "epoch": new.epoch, "lease_id": lease_id}
        try:
            ok, _, _ = await self.etcd.txn(
                [
                    Compare(self.key(db, "holder"), "version", 0),
                    Compare(self.key(db, "lease"), "version", snap.record_version),
                ],
                [
                    Put(self.key(db, "lease"), _dump(self._stored(new))),
                    Put(self.key(db, "holder"), _dump(holder), lease=lease_id),
                ],
                timeout=left(),
            )
        except TemporaryError:
            ok = await self._wrote_holder(db, lease_id)
        except EtcdError as exc:  # e.g. the lease just granted is gone already
            raise TemporaryError(f"{db}: lease acquire: {exc}") from exc
        if not ok and not await self._wrote_holder(db, lease_id):
            await self._revoke_quietly(lease_id)
            after = await self.snapshot(db, left())
            raise LeaseRefused(
                "another site changed the lease first", self.shown(db, after, self.clock.wall())
            )
        return new

    async def _reclaim(
        self, db: str, site: str, epoch: int, ttl: float, left: Callable[[], float]
    ) -> Lease:
        """The holder's key is gone but the record still names it at ``epoch``, not
        revoked (a failsafe period outlived its etcd lease): a new etcd lease and the
        holder key again, at the same epoch. The record's version in the compare proves
        nobody acquired meanwhile (an acquire raises the epoch in the same transaction);
        the record itself changes only if the ttl did."""
        snap = await self.snapshot(db, left())
        now = self.clock.wall()
        new = leases.reclaim(self.shown(db, snap, now), site, epoch, ttl, now)
        assert snap.record is not None
        lease_id = await self.etcd.grant(ttl, left())
        holder = {"site": site, "epoch": epoch, "lease_id": lease_id}
        ops: list[Op] = [Put(self.key(db, "holder"), _dump(holder), lease=lease_id)]
        if snap.record.ttl != ttl:
            ops.append(
                Put(self.key(db, "lease"), _dump(self._stored(replace(snap.record, ttl=ttl))))
            )
        try:
            ok, _, _ = await self.etcd.txn(
                [
                    Compare(self.key(db, "holder"), "version", 0),
                    Compare(self.key(db, "lease"), "version", snap.record_version),
                ],
                ops,
                timeout=left(),
            )
        except TemporaryError:
            ok = False  # the outcome is unknown: the holder key tells
        except EtcdError as exc:
            raise TemporaryError(f"{db}: lease reclaim: {exc}") from exc
        if ok or await self._wrote_holder(db, lease_id):
            self.gone_seen.pop((db, epoch), None)
            return new
        await self._revoke_quietly(lease_id)
        after = await self.snapshot(db, left())
        now = self.clock.wall()
        if after.live() and after.holder is not None and after.holder.site == site:
            # Another call of this holder's (a renewal racing a sync step) won.
            raise TemporaryError(f"{db}: the lease was reclaimed by a concurrent call")
        leases.reclaim(self.shown(db, after, now), site, epoch, ttl, now)  # refused: why
        raise TemporaryError(f"{db}: the reclaim did not land; the lease is still reclaimable")

    async def _wrote_holder(self, db: str, lease_id: int) -> bool:
        """Whether a write that timed out or lost its compare was ours after all (a retry
        on another member of a write that had already taken effect)."""
        try:
            found = await self.etcd.get(self.key(db, "holder"))
        except TemporaryError:
            return False
        return found is not None and found.lease == lease_id

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self.etcd.revoke(lease_id)
        except TemporaryError as exc:  # it expires by itself
            log.info("lease %x not revoked (%s); it runs out by itself", lease_id, exc)

    async def _release(
        self,
        db: str,
        site: str,
        epoch: int,
        why: str,
        fault_at: float | None,
        left: Callable[[], float],
    ) -> Lease:
        for _ in range(ATTEMPTS):
            snap = await self.snapshot(db, left())
            now = self.clock.wall()
            current = self.shown(db, snap, now)
            new = leases.release(current, site, epoch, now, why, fault_at)
            compares = [Compare(self.key(db, "lease"), "version", snap.record_version)]
            ops: list[Op] = [Put(self.key(db, "lease"), _dump(self._stored(new)))]
            if snap.holder is not None:
                compares.append(Compare(self.key(db, "holder"), "mod", snap.holder.mod_revision))
                ops.append(Delete(self.key(db, "holder")))
            ok, _, _ = await self.etcd.txn(compares, ops, timeout=left())
            if ok:
                if snap.holder is not None:
                    await self._revoke_quietly(snap.holder.lease_id)
                return new
        raise TemporaryError(f"{db}: the lease changed {ATTEMPTS} times during a release")

    async def _hand_over(
        self,
        db: str,
        site: str,
        epoch: int,
        to: str,
        ttl: float,
        fault_at: float | None,
        left: Callable[[], float],
    ) -> Lease:
        snap = await self.snapshot(db, left())
        now = self.clock.wall()
        new = leases.hand_over(self.shown(db, snap, now), site, epoch, to, ttl, now, fault_at)
        assert snap.holder is not None
        lease_id = await self.etcd.grant(ttl, left())
        holder = {"site": to, "epoch": new.epoch, "lease_id": lease_id}
        try:
            ok, _, _ = await self.etcd.txn(
                [
                    Compare(self.key(db, "holder"), "mod", snap.holder.mod_revision),
                    Compare(self.key(db, "lease"), "version", snap.record_version),
                ],
                [
                    Put(self.key(db, "lease"), _dump(self._stored(new))),
                    Put(self.key(db, "holder"), _dump(holder), lease=lease_id),
                ],
                timeout=left(),
            )
        except EtcdError as exc:
            raise TemporaryError(f"{db}: lease hand-over: {exc}") from exc
        if not ok:
            await self._revoke_quietly(lease_id)
            raise LeaseRefused("the lease changed during the handover", snap.record)
        await self._revoke_quietly(snap.holder.lease_id)
        return new

    async def revoke(self, db: str, to: str, timeout: float = 3.0) -> Lease:
        """An operator's forced failover: the holder can no longer renew; only ``to`` may
        acquire once the holder key is gone."""
        for _ in range(ATTEMPTS):
            snap = await self.snapshot(db, timeout)
            now = self.clock.wall()
            new = leases.revoke(self.shown(db, snap, now), to, now)
            ok, _, _ = await self.etcd.txn(
                [Compare(self.key(db, "lease"), "version", snap.record_version)],
                [Put(self.key(db, "lease"), _dump(self._stored(new)))],
                timeout=timeout,
            )
            if ok:
                return self.shown(db, replace(snap, record=new), now) or new
        raise TemporaryError(f"{db}: the lease changed {ATTEMPTS} times during a revocation")

    # -- what agents report and record -----------------------------------------------------

    async def report(self, db: str, site: str, status: dict[str, Any]) -> None:
        body = {**status, "reported_at": self.clock.wall()}
        await self.etcd.put(self.key(db, "site", site), _dump(body), timeout=1.5)

    async def record(self, db: str, kind: str, ident: str, body: dict[str, Any]) -> None:
        if kind not in ("record", "backup", "restore"):
            raise ValueError(f"no record kind {kind!r}")
        await self.etcd.put(self.key(db, kind, ident), _dump(body), timeout=3.0)

    async def finish(self, db: str, ident: str) -> None:
        """Clear the request ``ident`` (and only it: a newer one stays)."""
        key = self.key(db, "request")
        found = await self.etcd.get(key, timeout=3.0)
        if found is not None and found.json().get("id") == ident:
            await self.etcd.txn(
                [Compare(key, "mod", found.mod_revision)], [Put(key, b"{}")], timeout=3.0
            )

    async def event(self, kind: str, subject: str, message: str, data: dict[str, Any]) -> None:
        body = {
            "at": self.clock.wall(),
            "kind": kind,
            "subject": subject,
            "message": message,
            "data": data,
        }
        stamp = int(self.clock.wall() * 1e9)
        name = f"{self.root}events/{stamp:020d}-{secrets.token_hex(3)}"
        await self.etcd.put(name, _dump(body), timeout=3.0)

    async def pending_events(self, limit: int = 100) -> list[tuple[str, Event]]:
        """Events the agents filed, oldest first, with their keys (the controller files
        them in its own store, then :meth:`forget_events`: none is lost in between)."""
        found = await self.etcd.range(f"{self.root}events/", limit=min(limit, 100))
        out = []
        for kv in found:
            d = kv.json()
            out.append((kv.key, Event(d["at"], d["kind"], d["subject"], d["message"], d["data"])))
        return out

    async def forget_events(self, keys: list[str]) -> None:
        # etcd allows 128 operations in one transaction; pending_events stays below it.
        if keys:
            await self.etcd.txn([], [Delete(k) for k in keys[:100]])

    async def close(self) -> None:
        await self.etcd.close()


__all__ = ["Board", "EtcdClient", "EtcdUnavailable", "Holder", "LeaseRefused", "Snapshot"]
