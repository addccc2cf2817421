"""The controllers' leader election on etcd (control/leadership.py), on the in-memory etcd
and the manual clock: one leader, a new one when it goes, a deposed leader that stops
acting before anyone else may start and whose late writes etcd refuses."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.control.leadership import Leadership
from alwayson.store.etcd_store import EtcdStore
from alwayson.store.etcd_types import Compare, EtcdUnavailable, GuardFailed
from alwayson.store.memory_etcd import MemoryEtcd
from alwayson.util.clocks import ManualClock

SITES = ("witness", "jakarta", "surabaya")


def candidates(etcd: MemoryEtcd, clock: ManualClock) -> list[Leadership]:
    return [
        Leadership(etcd, site, f"127.{i}.0.1:7070", 100 + i, clock, ttl=3.0, margin=1.0)
        for i, site in enumerate(SITES)
    ]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def etcd(clock: ManualClock) -> MemoryEtcd:
    return MemoryEtcd(clock, min_lease_ttl=1)


async def test_the_first_candidate_leads_and_the_others_know_who(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, surabaya = candidates(etcd, clock)
    assert await witness.step()
    assert not await jakarta.step()
    assert not await surabaya.step()
    assert witness.term > 0
    for follower in (jakarta, surabaya):
        assert follower.leader is not None
        assert (follower.leader.site, follower.leader.api, follower.leader.term) == (
            "witness",
            "127.0.0.1:7070",
            witness.term,
        )
    # Turns while leading keep the same term.
    clock.advance(1.0)
    assert await witness.step()
    assert witness.leader is not None and witness.leader.term == witness.term


async def test_a_leader_that_stops_renewing_is_replaced_after_its_lease(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, _ = candidates(etcd, clock)
    await witness.step()
    first = witness.term
    await jakarta.step()
    # The witness controller dies: it never steps again.
    clock.advance(2.0)
    assert not await jakarta.step(), "its lease (3 s) has not run out yet"
    clock.advance(1.5)
    assert await jakarta.step()
    assert jakarta.term > first
    assert not witness.leads(), "its own clock says it stopped acting a second earlier"


async def test_a_leader_cut_from_etcd_stops_acting_before_another_can_win(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, _ = candidates(etcd, clock)
    await witness.step()
    await jakarta.step()
    stops_at = witness.acts_until()
    assert stops_at is not None
    # The leader's site is cut off: its calls fail, the others' go through.
    real_keep_alive = etcd.keep_alive

    async def cut_keep_alive(lease: int, timeout: float | None = None) -> int:
        if lease == witness.lease:
            raise_unavailable()
        return await real_keep_alive(lease, timeout)

    etcd.keep_alive = cut_keep_alive  # type: ignore[method-assign]
    won_at = None
    while won_at is None:
        clock.advance(0.25)
        await witness.step()
        if await jakarta.step():
            won_at = clock.monotonic()
    assert not witness.leads()
    assert won_at >= stops_at + witness.margin - 0.25, (won_at, stops_at)
    assert witness.last_error


def raise_unavailable() -> None:
    raise EtcdUnavailable("etcd: lease keep-alive: no member answered (cut)")


async def test_a_deposed_leaders_late_write_is_refused_by_etcd(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, _ = candidates(etcd, clock)
    await witness.step()
    old_term = witness.term
    store = EtcdStore(etcd, "/alwayson/p", witness.guard)
    await store.put("desired", {"v": 1})
    # A write prepared under the old term that reaches etcd after a new leader won.
    stale = EtcdStore(etcd, "/alwayson/p", lambda: [*_guard_of(witness.key, old_term)])
    clock.advance(3.5)
    assert await jakarta.step()
    with pytest.raises(GuardFailed):
        await stale.put("desired", {"v": "stale"})
    with pytest.raises(GuardFailed):
        await stale.compare_and_set("desired", 1, {"v": "stale"})
    with pytest.raises(GuardFailed):
        await stale.delete("desired")
    with pytest.raises(GuardFailed, match="not the leader"):
        await store.put("desired", {"v": "stale"})  # its own guard knows it lost
    fresh = EtcdStore(etcd, "/alwayson/p", jakarta.guard)
    found = await fresh.get("desired")
    assert found is not None and found.value == {"v": 1}
    assert await fresh.compare_and_set("desired", found.version, {"v": 2})


def _guard_of(key: str, term: int) -> list[Compare]:
    return [Compare(key, "create", term)]


async def test_resigning_hands_leadership_on_at_the_next_turn(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, _ = candidates(etcd, clock)
    await witness.step()
    await jakarta.step()
    await witness.resign()
    assert not witness.leads()
    assert await jakarta.step()


async def test_a_leader_whose_lease_survived_an_outage_leads_again_in_the_same_term(
    etcd: MemoryEtcd, clock: ManualClock
) -> None:
    witness, jakarta, _ = candidates(etcd, clock)
    await witness.step()
    term = witness.term
    etcd.available = False  # no quorum for 2.5 s: leases are extended when it returns
    clock.advance(2.5)
    assert not await witness.step()
    assert not await jakarta.step()
    etcd.available = True
    assert await witness.step()
    assert witness.term == term
    assert not await jakarta.step()


def test_the_margin_must_fit_in_the_ttl(etcd: MemoryEtcd, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="margin"):
        Leadership(etcd, "witness", "a", 1, clock, ttl=2.0, margin=2.0)


# A schedule of turns, crashes, outages and waits: never two candidates acting at once.
Move = st.one_of(
    st.tuples(st.just("step"), st.integers(0, 2)),
    st.tuples(st.just("advance"), st.floats(0.05, 2.5)),
    st.tuples(st.just("outage"), st.booleans()),
    st.tuples(st.just("resign"), st.integers(0, 2)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(Move, min_size=1, max_size=80))
def test_never_two_candidates_act_at_once(moves: list[tuple[str, object]]) -> None:
    async def run() -> None:
        clock = ManualClock()
        etcd = MemoryEtcd(clock, min_lease_ttl=1)
        them = candidates(etcd, clock)
        for kind, arg in moves:
            if kind == "step":
                await them[int(arg)].step()  # type: ignore[call-overload]
            elif kind == "advance":
                clock.advance(float(arg))  # type: ignore[arg-type]
            elif kind == "outage":
                etcd.available = not arg
            else:
                await them[int(arg)].resign()  # type: ignore[call-overload]
            acting = [c.site for c in them if c.leads()]
            assert len(acting) <= 1, acting
            terms = {c.term for c in them if c.leads()}
            assert len(terms) <= 1

    asyncio.run(run())


async def test_steps_while_a_leader_is_known_only_read(
    etcd: MemoryEtcd, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign is a transaction with a put: etcd commits it through raft (an fsync on
    every member) even when its compare fails. Once a leader is known, a step reads."""
    witness, jakarta, surabaya = candidates(etcd, clock)
    assert await witness.step()
    assert not await jakarta.step() and not await surabaya.step()
    sent: list[str] = []
    real_txn = etcd.txn

    async def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        sent.append("txn")
        return await real_txn(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(etcd, "txn", counted)
    for _ in range(5):
        clock.advance(0.5)
        assert await witness.step()
        assert not await jakarta.step() and not await surabaya.step()
    assert sent == []
    assert jakarta.leader is not None and jakarta.leader.term == witness.term
    # The key gone (the leader resigned): the next step campaigns, and wins.
    await witness.resign()
    sent.clear()
    assert await jakarta.step()
    assert sent == ["txn"]
    assert not await surabaya.step()
    assert surabaya.leader is not None and surabaya.leader.site == "jakarta"
