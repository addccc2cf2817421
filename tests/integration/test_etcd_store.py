"""``EtcdStore`` passes the ``StateStore`` conformance suite on a real three-member etcd
cluster with mutual TLS, and its client moves to another member when one is lost."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support_etcd import Cluster, etcd_cluster, shared_etcd  # noqa: F401 - fixtures
from tests.unit import test_store as suite

from alwayson.store.etcd import Compare, Etcd, EtcdUnavailable, Put
from alwayson.store.etcd_store import EtcdStore

# Every check of the unit suite, here against etcd (the ``store`` fixture below).
for _name, _check in vars(suite).items():
    if _name.startswith("test_") and not _name.startswith("test_sqlite_"):
        globals()[_name] = _check


@pytest.fixture
async def store(shared_etcd: Cluster) -> AsyncIterator[EtcdStore]:  # noqa: F811
    # Each test its own root on the module's cluster: the suite expects an empty store.
    root = f"/alwayson/test-{uuid.uuid4().hex[:8]}"
    backend = EtcdStore(Etcd(shared_etcd.endpoints(), shared_etcd.client), root)
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_client_without_the_platform_certificate_is_refused(
    etcd_cluster: Cluster,  # noqa: F811
) -> None:
    plain = Etcd(etcd_cluster.endpoints(), None, timeout=1.0)
    try:
        with pytest.raises(EtcdUnavailable):
            await plain.get("/alwayson/x")
    finally:
        await plain.close()


async def test_the_client_moves_to_another_member_when_its_member_hangs_or_dies(
    etcd_cluster: Cluster,  # noqa: F811
) -> None:
    etcd = Etcd(etcd_cluster.endpoints("jakarta"), etcd_cluster.client, timeout=3.0)
    try:
        await etcd.put("/k", b"1")
        assert etcd.current == 0
        etcd_cluster.signal("jakarta", signal.SIGSTOP)  # hangs: TCP still accepts
        await etcd.put("/k", b"2")
        assert etcd.current != 0
        found = await etcd.get("/k")
        assert found is not None and found.value == b"2"
        etcd_cluster.stop("jakarta")
        ok, _, _ = await etcd.txn([Compare("/k", "value", b"2")], [Put("/k", b"3")])
        assert ok
    finally:
        await etcd.close()


async def test_no_quorum_is_unavailable_not_a_wrong_answer(
    etcd_cluster: Cluster,  # noqa: F811
) -> None:
    etcd = Etcd(etcd_cluster.endpoints("jakarta"), etcd_cluster.client, timeout=2.0)
    try:
        await etcd.put("/k", b"1")
        etcd_cluster.stop("surabaya")
        etcd_cluster.stop("witness")
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/k")
        with pytest.raises(EtcdUnavailable):
            await etcd.put("/k", b"2")
    finally:
        await etcd.close()


async def test_a_lease_keeps_its_key_until_it_runs_out(etcd_cluster: Cluster) -> None:  # noqa: F811
    etcd = Etcd(etcd_cluster.endpoints(), etcd_cluster.client)
    try:
        lease = await etcd.grant(2)
        await etcd.put("/held", b"x", lease=lease)
        assert await etcd.keep_alive(lease) >= 2
        await etcd.revoke(lease)
        assert await etcd.get("/held") is None
        assert await etcd.keep_alive(lease) == 0
        await etcd.revoke(lease)  # twice: no error
    finally:
        await etcd.close()
