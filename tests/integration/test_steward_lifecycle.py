"""Two stewards in one process, real PostgreSQL, an in-memory keeper: every act of the
steward's cycle once (initialise, clone, synchronous naming, a killed primary's release
and the standby's promotion, the old primary's rejoin with pg_rewind, switchover back).

PostgreSQL listens on free ports of two addresses of this run's own loopback subnet, so
the test needs no agent, no controller and no link relay; the stewards' ``shutdown``
stops every postmaster they started, even when the test fails.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from tests.support import open_to_workloads, reserve_subnet
from tests.unit.stewardfakes import HERE, THERE, FakeKeeper, config

from alwayson.data import switching
from alwayson.data.board import Board
from alwayson.data.deciding import Role
from alwayson.data.engines import Engine, Identity, find_binaries
from alwayson.data.layout import passfile_of
from alwayson.data.stewarding import CYCLE, Steward
from alwayson.util.clocks import SystemClock
from alwayson.util.sitelinks import Partitions


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def stewards(tmp_path: Path) -> AsyncIterator[tuple[Steward, Steward, FakeKeeper]]:
    clock = SystemClock()
    keeper = FakeKeeper(clock)
    open_to_workloads(tmp_path)  # PostgreSQL's unprivileged user must get through
    net = f"127.{reserve_subnet()}.0"
    hosts = {HERE: f"{net}.10", THERE: f"{net}.20"}
    addresses = {site: f"{host}:{free_port(host)}" for site, host in hosts.items()}
    made: list[Steward] = []
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
        partitions = Partitions(tmp_path / "partitions.json")
        made.append(Steward(cfg, cast(Board, keeper), engine, partitions, root, clock))
    renewing = [asyncio.create_task(s._renewing()) for s in made]
    try:
        yield made[0], made[1], keeper
    finally:
        for task in renewing:
            task.cancel()
        for steward in made:
            await steward.shutdown()


async def cycle_until(
    what: str, stewards: tuple[Steward, ...], done: Callable[[], bool]
) -> list[str]:
    """Cycle both stewards (as their loops would) until ``done()`` holds; the verdicts."""
    verdicts: list[str] = []
    for _ in range(240):
        for steward in stewards:
            verdicts.append(f"{steward.cfg.site}: {await steward.cycle()}")
        if done():
            return verdicts
        await asyncio.sleep(CYCLE)
    raise AssertionError(f"never reached {what}: {verdicts[-6:]}")


async def test_a_steward_pair_goes_through_every_act_of_the_cycle(
    stewards: tuple[Steward, Steward, FakeKeeper],
) -> None:
    first, second, keeper = stewards

    verdicts = await cycle_until(
        "a primary with a synchronous standby",
        (first, second),
        lambda: second.facts.get("receiver") == "streaming" and first.sync_standby == THERE,
    )
    assert verdicts[:2] == [
        f"{HERE}: initialised a new primary (lease epoch 1)",
        f"{THERE}: cloned a standby from {HERE} with pg_basebackup",
    ]
    assert keeper.current is not None and keeper.current.sync_standby == THERE

    # As if surabaya's agent had just restarted: cloning may have taken longer than a ttl on
    # a loaded machine, so the test sets the start it reasons about instead of hoping.
    second.started_at = SystemClock().monotonic()
    assert first.postmaster is not None
    first.postmaster.signal(signal.SIGKILL)
    await cycle_until("the kill seen", (first,), lambda: first.role is Role.FENCED)
    assert keeper.current is not None and keeper.current.holder is None  # released at once
    # A standby agent up less than a ttl takes nothing (a failsafe promise it gave before
    # a restart may still run): surabaya's "just restarted", so it waits that out.
    verdicts = await cycle_until("surabaya promoted", (second,), lambda: second.writable)
    assert verdicts[-1] == f"{THERE}: promoted: lease epoch 2 acquired after {HERE}'s was released"
    assert "the agent started less than a ttl ago" in verdicts[0]
    assert second.role is Role.PRIMARY and second.writable
    # The old primary rejoins by itself (pg_rewind) once 2 ttl have passed since its exit.
    verdicts = await cycle_until("jakarta rejoined", (first,), lambda: first.role is Role.STANDBY)
    assert verdicts[-1] == f"{HERE}: rejoined as a standby of {THERE} (rewind)"
    waiting = [v for v in verdicts[:-1] if "fenced" in v]
    assert all(v.endswith("another site holds a live lease and can be reached") for v in waiting)
    await cycle_until(
        "the old primary streaming as a synchronous standby",
        (second, first),
        lambda: first.facts.get("receiver") == "streaming" and second.sync_standby == HERE,
    )

    switched = await switching.switchover(second, HERE, second._report, CYCLE)
    assert switched["lost_writes"] == 0 and switched["epoch"] == 3
    verdicts = await cycle_until(
        "the primary back where it started",
        (first, second),
        lambda: second.facts.get("receiver") == "streaming" and first.sync_standby == THERE,
    )
    assert verdicts[0] == f"{HERE}: promoted: the lease was handed over"
    assert keeper.current is not None and keeper.current.holder == HERE
