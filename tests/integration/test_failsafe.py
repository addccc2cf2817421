"""The failsafe on real processes: a real 3-member etcd cluster, real PostgreSQL in two
sites, two stewards in this process (this checkout's code, as their loops run in an
agent: renewal, cycle, watchdog thread), each site's failsafe API served over HTTP.

Two etcd members stopped leave no quorum: the primary keeps taking (synchronous) writes
while its standby confirms it, and carries on with no restart when the members return.
Without its standby's answer, the same outage fences it within a tenure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from tests.support import open_to_workloads, reserve_subnet
from tests.support_etcd import Cluster, etcd_cluster  # noqa: F401 - the fixture
from tests.unit.stewardfakes import HERE, THERE, TTL, config

from alwayson.data.board import Board
from alwayson.data.deciding import Role
from alwayson.data.engines import Engine, Identity, find_binaries, query
from alwayson.data.failsafe import HttpAsker, failsafe_router
from alwayson.data.layout import passfile_of
from alwayson.data.stewarding import Steward
from alwayson.store.etcd import Etcd
from alwayson.util.clocks import SystemClock
from alwayson.util.errors import TemporaryError
from alwayson.util.sitelinks import Partitions

ROOT = "/alwayson/failsafe"
LOST = (THERE, "witness")  # two of the three members: no quorum anywhere


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Sites:
    etcd: Cluster
    stewards: dict[str, Steward]
    servers: dict[str, uvicorn.Server]
    reader: Board
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    serving: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def primary(self) -> Steward:
        return self.stewards[HERE]

    @property
    def standby(self) -> Steward:
        return self.stewards[THERE]

    async def lose_quorum(self) -> None:
        for name in LOST:
            self.etcd.stop(name)

    async def regain_quorum(self) -> None:
        for name in LOST:
            self.etcd.start(name)
        await asyncio.to_thread(self.etcd.wait_healthy)


async def until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached: {what}")
        await asyncio.sleep(0.05)


async def serve(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await until("the failsafe API listening", lambda: server.started, timeout=10)
    return server, task


@pytest.fixture
async def sites(tmp_path: Path, etcd_cluster: Cluster) -> AsyncIterator[Sites]:  # noqa: F811
    clock = SystemClock()
    open_to_workloads(tmp_path)  # PostgreSQL's unprivileged user must get through
    net = f"127.{reserve_subnet()}.0"
    hosts = {HERE: f"{net}.10", THERE: f"{net}.20"}
    addresses = {site: f"{host}:{free_port(host)}" for site, host in hosts.items()}
    apis = {site: f"{host}:{free_port(host)}" for site, host in hosts.items()}
    token = tmp_path / "token"
    token.write_text("platform-token\n")
    stewards: dict[str, Steward] = {}
    askers: list[HttpAsker] = []
    for site, other in ((HERE, THERE), (THERE, HERE)):
        root = tmp_path / site
        root.mkdir(mode=0o755)
        cfg = config(root).model_copy(
            update={
                "site": site,
                "replication": "synchronous",
                "listen": addresses[site],
                "peers": {other: addresses[other]},
                "endpoint": f"{hosts[site]}:{free_port(hosts[site])}",  # nothing listens
            }
        )
        engine = Engine(
            find_binaries(None),
            Identity.of(None),
            cfg.superuser_password,
            root / "tools.log",
            clock,
            passfile=passfile_of(cfg),
        )
        board = Board(Etcd(etcd_cluster.endpoints(site), etcd_cluster.client), ROOT, clock)
        asker = HttpAsker({other: apis[other]}, token)
        askers.append(asker)
        partitions = Partitions(tmp_path / "partitions.json")
        stewards[site] = Steward(cfg, board, engine, partitions, root, clock, asker)
    reader = Board(Etcd(etcd_cluster.endpoints(), etcd_cluster.client), ROOT, clock)
    made = Sites(etcd_cluster, stewards, {}, reader)
    try:
        for site, steward in stewards.items():
            app = FastAPI()
            app.include_router(failsafe_router({steward.name: steward}, token))
            host, port = apis[site].rsplit(":", 1)
            server, task = await serve(app, host, int(port))
            made.servers[site] = server
            made.serving[site] = task
        made.tasks = [asyncio.create_task(s.run()) for s in stewards.values()]
        yield made
    finally:
        for task in made.tasks:
            task.cancel()
        for task in made.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for steward in stewards.values():
            await steward.shutdown()
        for server in made.servers.values():
            server.should_exit = True
        for task in made.serving.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for asker in askers:
            await asker.close()
        for steward in stewards.values():
            await steward.board.close()
        await reader.close()


async def write(steward: Steward, n: int) -> None:
    await query(
        steward.admin_dsn(dbname="bank"),
        "INSERT INTO ledger (n) VALUES (%s)",
        (n,),
        timeout=2.0,
    )


async def test_a_primary_without_etcd_lives_on_its_standbys_word_then_without_it_fences(
    sites: Sites,
) -> None:
    primary, standby = sites.primary, sites.standby
    await until(
        "a primary with a synchronous standby named in the lease",
        lambda: (
            primary.role is Role.PRIMARY
            and primary.writable
            and standby.facts.get("receiver") == "streaming"
            and primary.lease is not None
            and primary.lease.sync_standby == THERE
        ),
    )
    await query(primary.admin_dsn(dbname="bank"), "CREATE TABLE ledger (n int)")
    assert primary.postmaster is not None and primary.tenure is not None
    pid, epoch = primary.postmaster.pid, primary.tenure.epoch

    # A standby agent up less than a ttl promises nothing (a promise it gave before a
    # restart may still run): on a fast machine the pair is streaming sooner than that.
    await until("the standby agent up for a ttl", lambda: time.monotonic() >= standby.quiet_until)

    # -- no quorum: the primary goes on because its standby says it follows it --------
    await sites.lose_quorum()
    lost_at = time.monotonic()
    written = 0
    while time.monotonic() < lost_at + 2 * TTL:  # twice the ttl: it would have fenced
        await write(primary, written)  # synchronous: the standby flushed it
        written += 1
        await asyncio.sleep(0.1)
    assert primary.on_failsafe and primary.status()["failsafe"] is True
    assert primary.role is Role.PRIMARY and primary.postmaster.pid == pid
    assert primary.endpoint_target() is not None
    assert standby.role is Role.STANDBY and standby.status()["promised_to"] == HERE
    assert not primary.watchdog_fired

    # -- the quorum returns: the same lease goes on, no restart ----------------------
    await sites.regain_quorum()
    await until("the failsafe over", lambda: not primary.on_failsafe, timeout=20)
    await write(primary, written)
    written += 1
    assert primary.postmaster.pid == pid and primary.tenure is not None
    assert primary.tenure.epoch == epoch
    lease = await sites.reader.read_lease("bank")
    assert lease is not None and (lease.holder, lease.epoch) == (HERE, epoch)
    rows = await query(primary.admin_dsn(dbname="bank"), "SELECT count(*) FROM ledger")
    assert rows[0][0] == written
    kinds: list[str] = []

    async def filed() -> None:
        kinds[:] = [e.kind for _, e in await sites.reader.pending_events()]

    deadline = time.monotonic() + 10
    while "db-failsafe-ended" not in kinds and time.monotonic() < deadline:
        await filed()
        await asyncio.sleep(0.2)
    assert [k for k in kinds if k.startswith("db-failsafe")] == ["db-failsafe", "db-failsafe-ended"]

    # -- no quorum and no answer from the standby: fenced within a tenure -----------
    sites.servers[THERE].should_exit = True
    await until("the standby's failsafe API closed", sites.serving[THERE].done, timeout=10)
    await sites.lose_quorum()
    lost_at = time.monotonic()
    await until(
        "the primary stopped",
        lambda: not primary.writable and not primary.postmaster.alive(),  # type: ignore[union-attr]
        timeout=TTL + 5,
    )
    stopped_after = time.monotonic() - lost_at
    assert stopped_after < TTL  # its last renewal + ttl - margin, with room for the stop
    assert primary.failsafe_trouble.startswith(f"{THERE}: no answer")
    with pytest.raises(TemporaryError):
        await write(primary, written)
    assert standby.role is Role.STANDBY  # no quorum: nobody takes over either
