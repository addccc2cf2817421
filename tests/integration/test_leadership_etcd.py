"""The controllers' leader election (control/leadership.py) on a real three-member etcd
cluster over mutual TLS: one leader, a new one once it stops renewing, and a write of the
deposed leader refused by etcd."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tests.support_etcd import Cluster, shared_etcd  # noqa: F401 - fixtures

from alwayson.control.leadership import Leadership
from alwayson.store.etcd import Compare, Etcd
from alwayson.store.etcd_store import EtcdStore
from alwayson.store.etcd_types import GuardFailed
from alwayson.util.clocks import SystemClock


async def test_a_new_leader_is_elected_when_the_leader_stops_renewing(
    shared_etcd: Cluster,  # noqa: F811
) -> None:
    key = f"/alwayson/test-{uuid.uuid4().hex[:8]}/control/leader"
    clock = SystemClock()
    clients = [
        Etcd(shared_etcd.endpoints(site), shared_etcd.client) for site in ("witness", "jakarta")
    ]
    witness, jakarta = (
        Leadership(etcd, site, f"127.{i}.0.1:7070", 1 + i, clock, ttl=3.0, key=key)
        for i, (etcd, site) in enumerate(zip(clients, ("witness", "jakarta"), strict=True))
    )
    try:
        assert await witness.step()
        assert not await jakarta.step()
        assert jakarta.leader is not None and jakarta.leader.site == "witness"
        old_term = witness.term
        store = EtcdStore(clients[0], key.rsplit("/control/", 1)[0], witness.guard)
        await store.put("desired", {"v": 1})
        # The witness controller stops (no more turns): jakarta wins once its lease ends.
        started = clock.monotonic()

        while not await jakarta.step():
            assert clock.monotonic() - started < 10.0, f"no new leader: {jakarta.last_error}"
            await asyncio.sleep(jakarta.every / 4)
        took = clock.monotonic() - started
        assert 2.0 <= took <= 6.0, took  # the 3 s lease, plus etcd's expiry check
        assert jakarta.term > old_term
        assert not witness.leads()
        stale = EtcdStore(clients[0], store.root, lambda: [Compare(key, "create", old_term)])
        with pytest.raises(GuardFailed):
            await stale.put("desired", {"v": "stale"})
        fresh = EtcdStore(clients[1], store.root, jakarta.guard)
        found = await fresh.get("desired")
        assert found is not None and found.value == {"v": 1}
        assert await fresh.compare_and_set("desired", found.version, {"v": 2})
        await jakarta.resign()
        assert await witness.step(), "a resignation hands leadership on at once"
    finally:
        await witness.resign()
        for etcd in clients:
            await etcd.close()
