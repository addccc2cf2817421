"""The etcd conformance suite: what the platform relies on from etcd, checked on the real
client against a real cluster (tests/integration/test_etcd_conformance.py) and on
``MemoryEtcd`` (tests/unit/test_memory_etcd.py). Where they disagree the real one is right.

Each check takes an :class:`EtcdHarness`: a client, a key prefix of the check's own (the
real cluster is shared by every check of a module; revisions are global, so a check
compares revisions only with ones it saw itself, and leaves no lease behind that could
expire during the next check), and ``advance(seconds)``, which moves time (the manual
clock of the fake, a real wait on the cluster). Real waits are a lease's TTL at most.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from alwayson.store.etcd_types import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Kv,
    Put,
    Read,
)
from alwayson.store.memory_etcd import ELECTION_TIMEOUT, MIN_LEASE_TTL

TTL = 2
"""The lease of the lease checks: the shortest a cluster with the platform's timing grants."""


@dataclass
class EtcdHarness:
    etcd: EtcdClient
    root: str
    """This check's own prefix, ending in ``/``."""
    advance: Callable[[float], Awaitable[None]]
    expiry_slack: float = 0.0
    """How late a lease's keys may vanish after its TTL (etcd's leader looks for expired
    leases every 0.5 s, then revokes them through raft); 0 on the fake: exactly on time."""
    lose_quorum: Callable[[], Awaitable[None]] | None = None
    regain_quorum: Callable[[], Awaitable[None]] | None = None
    leases: list[int] = field(default_factory=list)
    """Every lease a check granted, for the harness to revoke at the end."""

    def key(self, name: str) -> str:
        return self.root + name

    async def grant(self, ttl: float = TTL) -> int:
        lease = await self.etcd.grant(ttl)
        self.leases.append(lease)
        return lease

    async def revision(self) -> int:
        """The store's revision now (an empty transaction writes nothing)."""
        _, _, revision = await self.etcd.txn([])
        return revision

    async def get(self, name: str) -> Kv:
        found = await self.etcd.get(self.key(name))
        assert found is not None, f"{name} is missing"
        return found

    async def until_gone(self, names: list[str]) -> None:
        """Every key of ``names`` gone now, or within the harness's slack."""
        waited = 0.0
        while True:
            left = [n for n in names if await self.etcd.get(self.key(n)) is not None]
            if not left:
                return
            assert waited < self.expiry_slack, f"{left} still there {waited:.2f}s late"
            await self.advance(0.05)
            waited += 0.05


Check = Callable[[EtcdHarness], Awaitable[None]]


async def gone_lease(h: EtcdHarness) -> int:
    """The id of a lease that existed and no longer does."""
    lease = await h.grant()
    await h.etcd.revoke(lease)
    return lease


# ---------------------------------------------------------------- keys


async def check_put_and_get_count_versions_and_revisions(h: EtcdHarness) -> None:
    etcd, a, b = h.etcd, h.key("a"), h.key("b")
    assert await etcd.get(a) is None
    version, first = await etcd.put(a, b"1")
    assert version == 1
    assert await etcd.get(a) == Kv(a, b"1", 1, first, first, 0)
    assert await h.revision() == first

    version, second = await etcd.put(a, b"2")
    assert (version, second) == (2, first + 1)
    assert await etcd.get(a) == Kv(a, b"2", 2, second, first, 0)

    version, third = await etcd.put(a, b"2")  # the same value is a write all the same
    assert (version, third) == (3, second + 1)
    assert await etcd.put(b, b"x") == (1, third + 1)
    assert (await h.get("a")).mod_revision == third  # another key's put leaves it


async def check_empty_keys_are_refused(h: EtcdHarness) -> None:
    before = await h.revision()
    with pytest.raises(EtcdError):
        await h.etcd.get("")
    with pytest.raises(EtcdError):
        await h.etcd.put("", b"x")
    with pytest.raises(EtcdError):
        await h.etcd.range("")
    with pytest.raises(EtcdError):
        await h.etcd.delete("")
    for refused in (
        h.etcd.txn([Compare("", "version", 0)]),
        h.etcd.txn([], [Read("")]),
        h.etcd.txn([], [], [Put("", b"x")]),
    ):
        with pytest.raises(EtcdError):
            await refused
    assert await h.revision() == before


async def check_a_delete_forgets_the_key_and_is_a_revision(h: EtcdHarness) -> None:
    etcd, a = h.etcd, h.key("a")
    await etcd.put(a, b"1")
    _, put = await etcd.put(a, b"2")
    assert await etcd.delete(a) == 1
    assert await etcd.get(a) is None
    assert await h.revision() == put + 1
    # Created again: a new key (version 1, a new create revision).
    assert await etcd.put(a, b"3") == (1, put + 2)
    assert await etcd.get(a) == Kv(a, b"3", 1, put + 2, put + 2, 0)
    # Deleting nothing writes nothing.
    assert await etcd.delete(h.key("missing")) == 0
    assert await etcd.delete(h.key("missing/"), prefix=True) == 0
    assert await h.revision() == put + 2


async def check_a_prefix_delete_takes_every_key_under_it_in_one_revision(
    h: EtcdHarness,
) -> None:
    etcd = h.etcd
    for name in ("d/1", "d/2", "d/sub/3", "d", "d2", "e"):
        _, last = await etcd.put(h.key(name), b"x")
    assert await etcd.delete(h.key("d/"), prefix=True) == 3
    assert await h.revision() == last + 1
    assert [kv.key for kv in await etcd.range(h.root)] == [h.key(n) for n in ("d", "d2", "e")]
    assert await etcd.delete(h.key("d"), prefix=True) == 2  # "d" and "d2" start with "d"
    assert [kv.key for kv in await etcd.range(h.root)] == [h.key("e")]


async def check_range_order_limit_and_newest_first(h: EtcdHarness) -> None:
    etcd = h.etcd
    for name in ("k/c", "k/a", "k/b", "k/a/x", "k/é", "kz", "j"):
        await etcd.put(h.key(name), name.encode())
    inside = [h.key(n) for n in ("k/a", "k/a/x", "k/b", "k/c", "k/é")]  # byte order
    k = h.key("k/")
    assert [kv.key for kv in await etcd.range(k)] == inside
    assert [kv.value for kv in await etcd.range(k)] == [
        n.encode() for n in ("k/a", "k/a/x", "k/b", "k/c", "k/é")
    ]
    assert [kv.key for kv in await etcd.range(k, limit=2)] == inside[:2]
    assert [kv.key for kv in await etcd.range(k, newest_first=True)] == inside[::-1]
    # The limit applies after the sort: the last keys, newest first.
    assert [kv.key for kv in await etcd.range(k, limit=2, newest_first=True)] == [
        inside[4],
        inside[3],
    ]
    assert [kv.key for kv in await etcd.range(k, limit=99)] == inside
    assert await etcd.range(h.key("none/")) == []
    assert await etcd.range(h.key("none/"), newest_first=True) == []


# ---------------------------------------------------------------- transactions


async def check_txn_compares_each_target(h: EtcdHarness) -> None:
    etcd, a, missing = h.etcd, h.key("a"), h.key("missing")
    _, created = await etcd.put(a, b"v1")
    _, modified = await etcd.put(a, b"v2")
    lease = await h.grant()
    held = h.key("held")
    await etcd.put(held, b"h", lease=lease)
    cases: list[tuple[Compare, bool]] = [
        (Compare(a, "version", 2), True),
        (Compare(a, "version", 1), False),
        (Compare(a, "version", 1, ">"), True),
        (Compare(a, "version", 2, "<"), False),
        (Compare(a, "version", 3, "<"), True),
        (Compare(a, "version", 2, "!="), False),
        (Compare(missing, "version", 0), True),  # "absent"
        (Compare(missing, "version", 0, ">"), False),
        (Compare(a, "mod", modified), True),
        (Compare(a, "mod", created), False),
        (Compare(a, "mod", modified, "<"), False),
        (Compare(a, "mod", created, ">"), True),
        (Compare(missing, "mod", 0), True),
        (Compare(a, "create", created), True),
        (Compare(a, "create", modified), False),
        (Compare(a, "create", modified, "<"), True),
        (Compare(missing, "create", 0), True),
        (Compare(a, "value", b"v2"), True),
        (Compare(a, "value", b"v1"), False),
        (Compare(a, "value", b"v1", ">"), True),
        (Compare(a, "value", b"v3", ">"), False),
        (Compare(a, "value", b"v3", "<"), True),
        (Compare(a, "value", b"v2", "!="), False),
        (Compare(a, "value", b"v2x", "<"), True),  # a prefix sorts first
        # A missing key's value compares false whatever the operator.
        (Compare(missing, "value", b""), False),
        (Compare(missing, "value", b"x", "!="), False),
        (Compare(missing, "value", b"x", "<"), False),
        (Compare(a, "lease", 0), True),
        (Compare(a, "lease", lease), False),
        (Compare(held, "lease", lease), True),
        (Compare(held, "lease", 0, "!="), True),
        (Compare(held, "lease", 0), False),
        (Compare(missing, "lease", 0), True),
    ]
    before = await h.revision()
    for compare, holds in cases:
        ok, reads, revision = await etcd.txn([compare], [Read(a)], [Read(held), Read(missing)])
        assert ok is holds, compare
        expected = [[await h.get("a")]] if holds else [[await h.get("held")], []]
        assert reads == expected, compare
        assert revision == before, compare  # reads only: nothing written
    # Every compare must hold.
    ok, _, _ = await etcd.txn([Compare(a, "version", 2), Compare(a, "value", b"v1")])
    assert not ok
    ok, _, _ = await etcd.txn([Compare(a, "version", 2), Compare(missing, "version", 0)])
    assert ok
    await etcd.revoke(lease)


async def check_txn_branches_write_and_read(h: EtcdHarness) -> None:
    etcd, a, b = h.etcd, h.key("a"), h.key("b")
    ok, reads, revision = await etcd.txn(
        [Compare(a, "version", 0)], [Put(a, b"new"), Read(a)], [Read(a)]
    )
    assert ok
    assert reads == [[Kv(a, b"new", 1, revision, revision, 0)]]  # sees the put before it
    # The same compare now fails: the failure branch runs, and writes.
    ok, reads, after = await etcd.txn(
        [Compare(a, "version", 0)], [Put(a, b"again")], [Read(a), Put(b, b"lost"), Read(b)]
    )
    assert not ok
    assert after == revision + 1
    assert reads == [
        [Kv(a, b"new", 1, revision, revision, 0)],
        [Kv(b, b"lost", 1, after, after, 0)],
    ]
    assert (await h.get("a")).value == b"new"
    # A read after a delete in the same transaction sees nothing.
    ok, reads, deleted = await etcd.txn([], [Delete(b), Read(b), Read(a)])
    assert ok and deleted == after + 1
    assert reads == [[], [await h.get("a")]]


async def check_a_txn_of_several_writes_is_one_revision(h: EtcdHarness) -> None:
    etcd = h.etcd
    await etcd.put(h.key("gone/1"), b"x")
    await etcd.put(h.key("gone/2"), b"x")
    _, before = await etcd.put(h.key("kept"), b"1")
    ok, _, revision = await etcd.txn(
        [Compare(h.key("kept"), "version", 1)],
        [
            Put(h.key("a"), b"1"),
            Put(h.key("b"), b"2"),
            Put(h.key("kept"), b"2"),
            Delete(h.key("gone/"), prefix=True),
        ],
    )
    assert ok and revision == before + 1
    assert await h.revision() == revision
    for name in ("a", "b", "kept"):
        assert (await h.get(name)).mod_revision == revision
    assert (await h.get("kept")).version == 2
    assert await etcd.range(h.key("gone/")) == []
    # Nothing to do, or only reads, or a delete of nothing: no revision.
    assert (await etcd.txn([], [Read(h.key("a"))]))[2] == revision
    assert (await etcd.txn([], [Delete(h.key("nothing"))]))[2] == revision
    assert (await etcd.txn([Compare(h.key("a"), "version", 9)], [Put(h.key("a"), b"x")]))[
        2
    ] == revision
    assert await h.revision() == revision


async def check_a_txn_that_writes_a_key_twice_is_refused_whole(h: EtcdHarness) -> None:
    etcd, a, b = h.etcd, h.key("a"), h.key("b")
    await etcd.put(a, b"0")
    before = await h.revision()
    refused = [
        ([Put(a, b"1"), Put(a, b"2")], []),
        ([Put(a, b"1"), Delete(a)], []),
        ([Delete(a), Put(a, b"1")], []),
        ([Put(a, b"1"), Delete(h.root, prefix=True)], []),
        # In the branch not taken too: etcd checks both before comparing.
        ([Put(b, b"1")], [Put(a, b"1"), Put(a, b"2")]),
    ]
    for success, failure in refused:
        with pytest.raises(EtcdError):
            await etcd.txn([], success, failure)
    assert await h.revision() == before
    assert await etcd.get(b) is None and (await h.get("a")).value == b"0"
    # Deletes may overlap each other, and a key may be read and written.
    ok, reads, _ = await etcd.txn([], [Read(a), Delete(a), Delete(a, prefix=True), Put(b, b"1")])
    assert ok and reads[0][0].value == b"0"
    assert [kv.key for kv in await etcd.range(h.root)] == [b]


async def check_a_put_with_a_missing_lease_is_refused(h: EtcdHarness) -> None:
    etcd, a = h.etcd, h.key("a")
    lease = await gone_lease(h)
    before = await h.revision()
    with pytest.raises(EtcdError):
        await etcd.put(a, b"1", lease=lease)
    with pytest.raises(EtcdError):
        await etcd.txn([], [Put(h.key("b"), b"1"), Put(a, b"1", lease=lease)])
    with pytest.raises(EtcdError):
        await etcd.txn([Compare(a, "version", 5)], [], [Put(a, b"1", lease=lease)])
    assert await h.revision() == before
    # Only the branch taken is checked.
    ok, _, revision = await etcd.txn([], [Put(a, b"1")], [Put(a, b"2", lease=lease)])
    assert ok and revision == before + 1


# ---------------------------------------------------------------- leases


async def check_a_lease_is_granted_in_whole_seconds_and_at_least_the_minimum(
    h: EtcdHarness,
) -> None:
    etcd = h.etcd
    assert MIN_LEASE_TTL == 2  # the platform's timing (heartbeat 100 ms, election 1 s)
    granted = {ttl: await h.grant(ttl) for ttl in (0.2, 1, 2, 2.2, 3)}
    assert len(set(granted.values())) == len(granted) and 0 not in granted.values()
    assert [await etcd.keep_alive(lease) for lease in granted.values()] == [2, 2, 2, 3, 3]
    for lease in granted.values():
        await etcd.revoke(lease)


async def check_revoke_deletes_the_keys_of_the_lease_in_one_revision(h: EtcdHarness) -> None:
    etcd = h.etcd
    lease, other = await h.grant(), await h.grant()
    await etcd.put(h.key("a"), b"1", lease=lease)
    await etcd.put(h.key("b"), b"1", lease=lease)
    await etcd.put(h.key("other"), b"1", lease=other)
    _, before = await etcd.put(h.key("plain"), b"1")
    assert (await h.get("a")).lease == lease
    assert await etcd.keep_alive(lease) == TTL
    await etcd.revoke(lease)
    assert await etcd.get(h.key("a")) is None and await etcd.get(h.key("b")) is None
    assert await h.revision() == before + 1
    assert [kv.key for kv in await etcd.range(h.root)] == [h.key("other"), h.key("plain")]
    assert await etcd.keep_alive(lease) == 0
    await etcd.revoke(lease)  # twice: no error, nothing written
    await etcd.revoke(0)
    assert await h.revision() == before + 1
    # A lease without keys ends without a revision.
    await etcd.delete(h.key("other"))
    after = await h.revision()
    await etcd.revoke(other)
    assert await h.revision() == after


async def check_a_put_moves_a_key_to_its_new_lease_or_off_any(h: EtcdHarness) -> None:
    etcd = h.etcd
    first, second = await h.grant(), await h.grant()
    await etcd.put(h.key("moved"), b"1", lease=first)
    await etcd.put(h.key("moved"), b"2", lease=second)
    await etcd.put(h.key("freed"), b"1", lease=first)
    await etcd.put(h.key("freed"), b"2")
    ok, _, _ = await etcd.txn([], [Put(h.key("in-txn"), b"1", lease=first)])
    assert ok
    await etcd.txn([], [Put(h.key("in-txn"), b"2")])
    assert (await h.get("moved")).lease == second
    before = await h.revision()
    await etcd.revoke(first)
    assert await h.revision() == before  # it held no key any more
    assert (await h.get("moved")).value == b"2"
    assert (await h.get("freed")) == Kv(h.key("freed"), b"2", 2, before - 2, before - 3, 0)
    assert (await h.get("in-txn")).lease == 0
    await etcd.revoke(second)
    assert await etcd.get(h.key("moved")) is None


async def check_the_keys_of_a_lease_vanish_when_it_expires(h: EtcdHarness) -> None:
    etcd = h.etcd
    lease = await h.grant(TTL)
    await etcd.put(h.key("a"), b"1", lease=lease)
    await etcd.put(h.key("b"), b"1", lease=lease)
    _, before = await etcd.put(h.key("plain"), b"1")
    await h.advance(TTL - 0.5)
    assert (await h.get("a")).lease == lease and await etcd.get(h.key("b")) is not None
    await h.advance(0.5)
    await h.until_gone(["a", "b"])
    assert await h.revision() == before + 1  # both in one revision
    assert await etcd.get(h.key("plain")) is not None
    assert await etcd.keep_alive(lease) == 0
    await etcd.revoke(lease)
    with pytest.raises(EtcdError):
        await etcd.put(h.key("c"), b"1", lease=lease)


async def check_keep_alive_restarts_the_lease(h: EtcdHarness) -> None:
    etcd = h.etcd
    lease = await h.grant(TTL)
    await etcd.put(h.key("a"), b"1", lease=lease)
    await h.advance(TTL - 0.5)
    assert await etcd.keep_alive(lease) == TTL
    await h.advance(TTL - 0.5)  # past the first TTL: kept alive
    assert (await h.get("a")).lease == lease
    await h.advance(0.5)
    await h.until_gone(["a"])
    assert await etcd.keep_alive(lease) == 0


CHECKS: list[Check] = [
    check_put_and_get_count_versions_and_revisions,
    check_empty_keys_are_refused,
    check_a_delete_forgets_the_key_and_is_a_revision,
    check_a_prefix_delete_takes_every_key_under_it_in_one_revision,
    check_range_order_limit_and_newest_first,
    check_txn_compares_each_target,
    check_txn_branches_write_and_read,
    check_a_txn_of_several_writes_is_one_revision,
    check_a_txn_that_writes_a_key_twice_is_refused_whole,
    check_a_put_with_a_missing_lease_is_refused,
    check_a_lease_is_granted_in_whole_seconds_and_at_least_the_minimum,
    check_revoke_deletes_the_keys_of_the_lease_in_one_revision,
    check_a_put_moves_a_key_to_its_new_lease_or_off_any,
    check_the_keys_of_a_lease_vanish_when_it_expires,
    check_keep_alive_restarts_the_lease,
]


# ---------------------------------------------------------------- no quorum


async def check_no_quorum_fails_every_call_and_leases_outlive_it(h: EtcdHarness) -> None:
    """Two members lost: every call is unavailable; leases do not run out meanwhile (no
    leader counts), and the leader elected after it restarts each one's count with an
    election timeout more (etcd's Promote)."""
    assert h.lose_quorum is not None and h.regain_quorum is not None
    etcd, a = h.etcd, h.key("a")
    lease = await h.grant(TTL)
    await etcd.put(a, b"1", lease=lease)
    await etcd.put(h.key("plain"), b"1")
    await h.lose_quorum()
    short = 0.5  # the real client's deadline per call: keep the waits short
    for call in (
        etcd.get(a, timeout=short),
        etcd.range(h.root, timeout=short),
        etcd.put(a, b"2", timeout=short),
        etcd.delete(a, timeout=short),
        etcd.txn([], [Put(a, b"2")], timeout=short),
        etcd.keep_alive(lease, timeout=short),
        etcd.grant(TTL, timeout=short),
        etcd.revoke(lease, timeout=short),
    ):
        with pytest.raises(EtcdUnavailable):
            await call
    assert etcd.last_error
    await h.advance(TTL + 1)
    with pytest.raises(EtcdUnavailable):
        await etcd.get(a, timeout=short)
    await h.regain_quorum()
    assert (await h.get("a")).value == b"1"  # outlived its TTL: nobody counted
    await h.advance(TTL - 0.5)
    assert await etcd.get(a) is not None
    await h.advance(ELECTION_TIMEOUT + 0.5)
    await h.until_gone(["a"])
    assert (await h.get("plain")).value == b"1"


OUTAGE_CHECKS: list[Check] = [check_no_quorum_fails_every_call_and_leases_outlive_it]
