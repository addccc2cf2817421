"""An in-memory etcd for unit tests: the API of :class:`alwayson.store.etcd.Etcd` with
etcd 3.4's semantics, on an injected clock, without grpc or a process.

What it keeps as etcd does (tests/conformance/etcds.py runs the same checks on both):

- One store revision, +1 per write: a put, a delete that deletes something, a transaction
  that changes anything (however many keys: one revision), a lease's end that deletes
  keys. A key's ``version`` is 1 after its creation and +1 per put; a delete forgets it.
- Transactions: compares on version, mod and create revision, lease (a missing key reads
  as zeros) and value (always false on a missing key); reads in a transaction see the
  writes before them. Refused like etcd's (:class:`EtcdError`): an empty key anywhere,
  two writes of one key in either branch, a put with a lease that does not exist in the
  branch taken.
- Leases: granted for whole seconds, never less than the cluster's minimum
  (:data:`MIN_LEASE_TTL`: etcd raises every TTL to 1.5 election timeouts); a key put
  with a lease leaves any lease it had, and a put without one detaches it. A lease ends
  when ``clock.monotonic()`` reaches its expiry (checked at the start of every call) or
  when revoked; its keys go in one revision.

Unavailability: ``available = False`` is "no quorum" (two sites lost): every call but
``close`` raises :class:`EtcdUnavailable`, nothing expires meanwhile (no leader counts),
and when it is set back the new leader extends every lease to a full TTL plus one
election timeout from then, as etcd's ``Promote`` does after a leader change.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    Kv,
    MemberInfo,
    Op,
    Put,
    Read,
    _range_end,
    holds,
)
from alwayson.store.members import ELECTION_MS, HEARTBEAT_MS
from alwayson.util.clocks import Clock

VERSION = "3.4.23"
ELECTION_TIMEOUT = ELECTION_MS / 1000
MIN_LEASE_TTL = math.ceil((3 * (ELECTION_MS // HEARTBEAT_MS) // 2) * HEARTBEAT_MS / 1000)
"""etcd's shortest lease with the platform's timing: 1.5 election timeouts (in heartbeat
ticks), rounded up to whole seconds: 2 s."""

FIRST_LEASE_ID = 0x1335_A24E_D97A_0000
"""Lease ids are large in etcd (member id bits and a counter); small ones would hide a
caller that mixes them up with revisions or versions."""


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryEtcd:
    """One etcd cluster in memory, seen through a client of ``endpoints``."""

    def __init__(
        self,
        clock: Clock,
        endpoints: Sequence[str] = ("memory-etcd:2379",),
        min_lease_ttl: int = MIN_LEASE_TTL,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.clock = clock
        self._endpoints = list(endpoints)
        self.min_lease_ttl = min_lease_ttl
        self.current = 0
        self.last_error = ""
        self.revision = 1
        """The store's revision (etcd's first is 1; the first write makes it 2)."""
        self._kvs: dict[str, Kv] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(FIRST_LEASE_ID)
        self._available = True
        self._members = [
            MemberInfo(_member_id(i), f"member-{i}", [f"https://{a}"], [f"https://{a}"])
            for i, a in enumerate(self._endpoints)
        ]
        self._member_ids = itertools.count(_member_id(len(self._endpoints)))
        self.raft_leader = self._endpoints[0]
        """The member raft elected (``move_leader`` hands it on)."""

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    @property
    def available(self) -> bool:
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        if value == self._available:
            return
        if value:
            # A leader is elected again: it restarts every lease's count (etcd's Promote).
            now = self.clock.monotonic()
            for lease in self._leases.values():
                lease.expires_at = now + ELECTION_TIMEOUT + lease.ttl
        else:
            self._expire()  # what ran out before the quorum was lost is gone
        self._available = value

    async def _enter(self, what: str) -> None:
        """Every call: a suspension point (as a network call is), then the outage, then
        the leases that ran out since the last call."""
        await asyncio.sleep(0)
        if not self._available:
            self.last_error = f"{self._endpoints[self.current]}: no quorum (simulated)"
            raise EtcdUnavailable(f"etcd: {what}: no member answered ({self.last_error})")
        self._expire()

    def _expire(self) -> None:
        now = self.clock.monotonic()
        ended = [(lease.expires_at, lid) for lid, lease in self._leases.items()]
        for expires_at, lid in sorted(ended):
            if expires_at <= now:
                self._end_lease(lid)

    def _end_lease(self, lid: int) -> None:
        lease = self._leases.pop(lid)
        if lease.keys:  # one revision for all of them, as etcd's revoke is one transaction
            self.revision += 1
            for key in lease.keys:
                del self._kvs[key]

    def _refuse(self, what: str, why: str) -> EtcdError:
        return EtcdError(f"etcd {self._endpoints[self.current]}: {what}: etcdserver: {why}")

    # -- key/value -------------------------------------------------------------------------

    async def get(self, key: str, timeout: float | None = None) -> Kv | None:
        await self._enter(f"get {key}")
        self._check_keys(f"get {key}", [key])
        return self._kvs.get(key)

    async def range(
        self,
        prefix: str,
        limit: int = 0,
        newest_first: bool = False,
        timeout: float | None = None,
    ) -> list[Kv]:
        """Keys starting with ``prefix`` in key order (descending with ``newest_first``)."""
        await self._enter(f"range {prefix}")
        self._check_keys(f"range {prefix}", [prefix])
        found = self._in_range(prefix, True)
        if newest_first:
            found.reverse()
        return found[:limit] if limit > 0 else found

    async def put(
        self, key: str, value: bytes, lease: int = 0, timeout: float | None = None
    ) -> tuple[int, int]:
        """Overwrite; returns (the key's new version, the store's revision)."""
        what = f"put {key}"
        await self._enter(what)
        self._check_keys(what, [key])
        self._check_leases(what, [Put(key, value, lease)])
        self._write([Put(key, value, lease)])
        return self._kvs[key].version, self.revision

    async def delete(self, key: str, prefix: bool = False, timeout: float | None = None) -> int:
        what = f"delete {key}"
        await self._enter(what)
        self._check_keys(what, [key])
        count = len(self._in_range(key, prefix))
        self._write([Delete(key, prefix)])
        return count

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> tuple[bool, list[list[Kv]], int]:
        """All of ``compare`` true: ``success`` runs, else ``failure``, atomically.
        Returns (succeeded, what each Read found, the store's revision)."""
        what = "transaction"
        await self._enter(what)
        self._check_keys(what, [c.key for c in compare])
        for branch in (success, failure):
            self._check_keys(what, [op.key for op in branch])
            self._check_duplicates(what, branch)
        succeeded = all(self._holds(c) for c in compare)
        ops = success if succeeded else failure
        self._check_leases(what, ops)
        reads = self._write(ops)
        return succeeded, reads, self.revision

    def _in_range(self, key: str, prefix: bool) -> list[Kv]:
        if not prefix:
            found = self._kvs.get(key)
            return [] if found is None else [found]
        start = key.encode()
        end = _range_end(start)
        inside = [kv for name, kv in self._kvs.items() if _covers(start, end, name.encode())]
        return sorted(inside, key=lambda kv: kv.key.encode())

    def _check_keys(self, what: str, keys: Iterable[str]) -> None:
        if any(not key for key in keys):
            raise self._refuse(what, "key is not provided")

    def _check_duplicates(self, what: str, ops: Sequence[Op]) -> None:
        """etcd refuses a branch that writes one key twice: two puts, or a put and a
        delete that covers it (in either order); overlapping deletes are fine."""
        puts = [op.key.encode() for op in ops if isinstance(op, Put)]
        deletes = [op for op in ops if isinstance(op, Delete)]
        if len(set(puts)) < len(puts):
            raise self._refuse(what, "duplicate key given in txn request")
        for delete in deletes:
            start = delete.key.encode()
            end = _range_end(start) if delete.prefix else b""
            if any(_covers(start, end, put) for put in puts):
                raise self._refuse(what, "duplicate key given in txn request")

    def _check_leases(self, what: str, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise self._refuse(what, "requested lease not found")

    def _holds(self, c: Compare) -> bool:
        return holds(c, self._kvs.get(c.key))

    def _write(self, ops: Sequence[Op]) -> list[list[Kv]]:
        """Apply ``ops`` in order as one write transaction (validated already); the
        revision moves once if anything changed. Returns what each Read found."""
        revision = self.revision + 1
        changed = False
        reads: list[list[Kv]] = []
        for op in ops:
            if isinstance(op, Read):
                reads.append(self._in_range(op.key, False))
            elif isinstance(op, Put):
                old = self._kvs.get(op.key)
                self._detach(old)
                self._kvs[op.key] = Kv(
                    key=op.key,
                    value=bytes(op.value),
                    version=old.version + 1 if old else 1,
                    mod_revision=revision,
                    create_revision=old.create_revision if old else revision,
                    lease=op.lease,
                )
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                changed = True
            else:
                for kv in self._in_range(op.key, op.prefix):
                    self._detach(kv)
                    del self._kvs[kv.key]
                    changed = True
        if changed:
            self.revision = revision
        return reads

    def _detach(self, kv: Kv | None) -> None:
        if kv is not None and kv.lease in self._leases:
            self._leases[kv.lease].keys.discard(kv.key)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float, timeout: float | None = None) -> int:
        """A new lease of at least ``ttl`` seconds (etcd counts whole seconds)."""
        await self._enter("lease grant")
        seconds = max(1, math.ceil(ttl), self.min_lease_ttl)
        lid = next(self._lease_ids)
        self._leases[lid] = _Lease(seconds, self.clock.monotonic() + seconds)
        return lid

    async def keep_alive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh ``lease`` once; returns its new TTL, 0 when it no longer exists."""
        await self._enter("lease keep-alive")
        found = self._leases.get(lease)
        if found is None:
            return 0
        found.expires_at = self.clock.monotonic() + found.ttl
        return found.ttl

    async def revoke(self, lease: int, timeout: float | None = None) -> None:
        await self._enter("lease revoke")
        if lease in self._leases:
            self._end_lease(lease)

    # -- the cluster -----------------------------------------------------------------------

    async def member_status(self, address: str, timeout: float = 1.0) -> dict[str, Any]:
        """One member's own view, as :meth:`Etcd.member_status` reports it."""
        await asyncio.sleep(0)
        if not self._available or address not in self._endpoints:
            raise EtcdUnavailable(f"etcd member {address}: no answer (simulated)")
        index = self._endpoints.index(address)
        return {
            "version": VERSION,
            "member_id": _member_id(index),
            "leader": _member_id(0),
            "raft_term": 2,
            "db_size": 20480,
            "errors": [],
        }

    async def member_list(self, timeout: float | None = None) -> list[MemberInfo]:
        await self._enter("member list")
        return list(self._members)

    async def member_remove(self, member_id: int, timeout: float | None = None) -> None:
        await self._enter("member remove")
        if not any(m.id == member_id for m in self._members):
            raise self._refuse("member remove", "member not found")
        self._members = [m for m in self._members if m.id != member_id]

    async def member_add(self, peer_urls: Sequence[str], timeout: float | None = None) -> int:
        """Added unstarted (no name), as etcd lists a member until it first starts."""
        await self._enter("member add")
        if any(set(peer_urls) & set(m.peer_urls) for m in self._members):
            raise self._refuse("member add", "Peer URLs already exists")
        added = MemberInfo(next(self._member_ids), "", list(peer_urls), [])
        self._members.append(added)
        return added.id

    async def move_leader(self, address: str, timeout: float = 2.0) -> str | None:
        await self._enter("move leader")
        if address not in self.endpoints:
            raise self._refuse("move leader", f"no member at {address}")
        if address == self.raft_leader:
            return None
        was, self.raft_leader = self.raft_leader, address
        return f"etcd's raft leader moved from {was} to {address}"

    async def close(self) -> None:
        """Nothing to let go of (as the real client, it may be used again after)."""


def _member_id(index: int) -> int:
    return 0x6B31_AC44_0A1C_0000 + index


def _covers(start: bytes, end: bytes, key: bytes) -> bool:
    """Whether etcd's range [start, end) holds ``key``: ``end`` empty is ``start`` alone,
    ``b"\\0"`` is every key from ``start`` on."""
    if not end:
        return key == start
    return start <= key and (end == b"\0" or key < end)
