"""The real client against a real three-member cluster passes the etcd conformance suite
(what ``MemoryEtcd`` is held to as well): every check under its own prefix of one shared
cluster, and the loss of the quorum on a cluster of its own."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.conformance.etcds import CHECKS, OUTAGE_CHECKS, Check, EtcdHarness
from tests.support_etcd import Cluster, etcd_cluster, shared_etcd  # noqa: F401 - fixtures

from alwayson.store.etcd import Etcd, EtcdUnavailable

EXPIRY_SLACK = 1.5
"""etcd's leader looks for expired leases every 0.5 s and revokes them through raft."""


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@contextlib.asynccontextmanager
async def harness_on(cluster: Cluster, first: str | None = None) -> AsyncIterator[EtcdHarness]:
    etcd = Etcd(cluster.endpoints(first), cluster.client)
    harness = EtcdHarness(etcd, f"/conformance/{uuid.uuid4().hex[:8]}/", sleep, EXPIRY_SLACK)
    try:
        yield harness
    finally:
        # Nothing left to expire during the next check (it would move the revision).
        with contextlib.suppress(EtcdUnavailable):
            for lease in harness.leases:
                await etcd.revoke(lease)
        await etcd.close()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_conformance(shared_etcd: Cluster, check: Check) -> None:  # noqa: F811
    async with harness_on(shared_etcd) as harness:
        await check(harness)


@pytest.mark.parametrize("check", OUTAGE_CHECKS, ids=[c.__name__ for c in OUTAGE_CHECKS])
async def test_conformance_without_quorum(etcd_cluster: Cluster, check: Check) -> None:  # noqa: F811
    lost = ("surabaya", "witness")
    async with harness_on(etcd_cluster, "jakarta") as harness:

        async def lose_quorum() -> None:
            for name in lost:
                etcd_cluster.stop(name)
            # Until the survivor has no leader (a leader steps down an election timeout
            # after it stops hearing from a quorum): from then on nothing a client asks
            # can be committed later, as on the fake.
            survivor = etcd_cluster.member("jakarta").endpoint
            deadline = time.monotonic() + 10
            while (await harness.etcd.member_status(survivor))["leader"] != 0:
                assert time.monotonic() < deadline, "jakarta still has a leader"
                await asyncio.sleep(0.05)

        async def regain_quorum() -> None:
            for name in lost:
                etcd_cluster.start(name)
            await asyncio.to_thread(etcd_cluster.wait_healthy)

        harness.lose_quorum, harness.regain_quorum = lose_quorum, regain_quorum
        await check(harness)
