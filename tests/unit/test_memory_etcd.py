"""``MemoryEtcd`` passes the etcd conformance suite on a manual clock, offers exactly the
real client's API, and simulates the loss of the quorum."""

from __future__ import annotations

import inspect

import pytest
from tests.conformance.etcds import CHECKS, OUTAGE_CHECKS, TTL, Check, EtcdHarness

from alwayson.store.etcd import Etcd
from alwayson.store.etcd_types import Compare, EtcdUnavailable, Put
from alwayson.store.memory_etcd import ELECTION_TIMEOUT, MemoryEtcd
from alwayson.util.clocks import ManualClock


def memory_harness(etcd: MemoryEtcd, clock: ManualClock) -> EtcdHarness:
    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    async def lose_quorum() -> None:
        etcd.available = False

    async def regain_quorum() -> None:
        etcd.available = True

    return EtcdHarness(etcd, "/conformance/", advance, 0.0, lose_quorum, regain_quorum)


@pytest.mark.parametrize("check", CHECKS + OUTAGE_CHECKS, ids=lambda c: c.__name__)
async def test_conformance(check: Check) -> None:
    clock = ManualClock()
    await check(memory_harness(MemoryEtcd(clock), clock))


def public(cls: type) -> dict[str, inspect.Signature | str]:
    found: dict[str, inspect.Signature | str] = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            found[name] = "property"
        elif inspect.iscoroutinefunction(member):
            found[name] = inspect.signature(member)
    return found


def test_it_offers_exactly_the_calls_of_the_real_client() -> None:
    ours, theirs = public(MemoryEtcd), public(Etcd)
    assert ours.pop("available") == "property"  # the fake's own: the outage switch
    assert ours == theirs
    real = Etcd(["127.0.0.1:1"], None)
    fake = MemoryEtcd(ManualClock(), ["127.0.0.1:1"])
    assert (fake.endpoints, fake.current, fake.last_error) == (
        real.endpoints,
        real.current,
        real.last_error,
    )


async def test_without_quorum_every_call_fails_and_nothing_changes() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock, ["a:2379", "b:2379"])
    lease = await etcd.grant(TTL)
    await etcd.put("/k", b"1", lease=lease)
    revision = etcd.revision
    etcd.available = False
    calls = [
        etcd.get("/k"),
        etcd.range("/"),
        etcd.put("/k", b"2"),
        etcd.delete("/k"),
        etcd.txn([Compare("/k", "version", 1)], [Put("/k", b"2")]),
        etcd.grant(1),
        etcd.keep_alive(lease),
        etcd.revoke(lease),
        etcd.member_status("a:2379"),
    ]
    for call in calls:
        with pytest.raises(EtcdUnavailable):
            await call
    assert "no quorum" in etcd.last_error
    await etcd.close()  # as the real client's, never fails
    clock.advance(60)
    with pytest.raises(EtcdUnavailable):
        await etcd.get("/k")  # nothing expires meanwhile: no leader counts
    etcd.available = True
    assert etcd.revision == revision
    found = await etcd.get("/k")
    assert found is not None and found.value == b"1"
    # The lease restarted from the quorum's return, an election timeout longer.
    clock.advance(TTL + ELECTION_TIMEOUT - 0.01)
    assert await etcd.get("/k") is not None
    clock.advance(0.01)
    assert await etcd.get("/k") is None
    assert etcd.revision == revision + 1


async def test_a_lease_that_ran_out_before_the_quorum_was_lost_is_gone_after() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    lease = await etcd.grant(TTL)
    await etcd.put("/k", b"1", lease=lease)
    clock.advance(TTL)  # expired, though no call has seen it yet
    etcd.available = False
    clock.advance(10)
    etcd.available = True
    assert await etcd.get("/k") is None
    assert await etcd.keep_alive(lease) == 0


async def test_leases_end_in_the_order_they_expire_one_revision_each() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    late = await etcd.grant(3)
    early = await etcd.grant(2)
    await etcd.put("/late", b"1", lease=late)
    await etcd.put("/early", b"1", lease=early)
    revision = etcd.revision
    clock.advance(2)
    assert await etcd.range("/") == [(await etcd.get("/late")) or pytest.fail("/late ended early")]
    assert etcd.revision == revision + 1
    clock.advance(5)
    assert await etcd.range("/") == []
    assert etcd.revision == revision + 2


async def test_member_status_answers_for_its_endpoints_only() -> None:
    etcd = MemoryEtcd(ManualClock(), ["a:2379", "b:2379"])
    status = await etcd.member_status("b:2379")
    assert status["version"] == "3.4.23" and status["leader"] != 0
    assert status["member_id"] != (await etcd.member_status("a:2379"))["member_id"]
    with pytest.raises(EtcdUnavailable):
        await etcd.member_status("c:2379")
