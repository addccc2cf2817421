"""The controller on the in-memory store, runtime and clock: no process, no sleep.

apply → turns → autoscale → a canary release of the autoscaled service → scale → a crash
and its restart → a controller killed and started again over the same world, asserting
the verdict sentences each turn ends with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alwayson.control.controller import Controller
from alwayson.control.routing import Table
from alwayson.metrics.model import Sample
from alwayson.metrics.scraping import Target
from alwayson.release.figures import REQUESTS
from alwayson.release.model import Phase as ReleasePhase
from alwayson.runtime.base import Kind, Phase
from alwayson.runtime.memory import MemoryProcesses, MemoryRuntime, MemoryWorld
from alwayson.store.memory import MemoryStore
from alwayson.util.clocks import ManualClock

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1.0.0"
    run: python -m bank.accounts
    port: 8000
    replicas: 2
    health: {http: /healthz, interval: 1s, timeout: 500ms}
    routes: [{path: /accounts}]
    autoscale: {min: 1, max: 6, targets: {rps: 50}}
    release:
      strategy: canary
      canary: {steps: [25, 100], pause: 2s}
      analysis: {interval: 1s, min_requests: 0}
"""


@dataclass
class TablesSeen:
    """Gateways as far as the controller can tell: each accepts the table it is pushed."""

    pushed: dict[str, Table] = field(default_factory=dict)

    async def push(self, admin: str, table: Table) -> None:
        self.pushed[admin] = table

    async def close(self) -> None:
        pass


@dataclass
class Lab:
    tmp: Path
    clock: ManualClock = field(default_factory=lambda: ManualClock(autojump=True))
    store: MemoryStore = field(default_factory=MemoryStore)
    tables: TablesSeen = field(default_factory=TablesSeen)
    world: MemoryWorld = field(init=False)

    def __post_init__(self) -> None:
        self.world = MemoryWorld(self.clock, log_dir=self.tmp / "logs")

    async def controller(self) -> Controller:
        """A controller as the daemon makes one: load what the store holds, adopt."""
        runtime = MemoryRuntime(self.world)
        ctl = Controller(
            self.store,
            runtime,
            MemoryProcesses(self.world),
            self.tmp / ".alwayson",
            self.clock,
            self.tables,
            None,
            address_free=lambda host, port: True,
        )
        await ctl.load()
        await runtime.adopt()
        return ctl


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    (tmp_path / "alwayson.yaml").write_text(SPEC)
    yield Lab(tmp_path)


async def settle(ctl: Controller, turns: int = 60) -> str:
    """Run loop turns (letting the runtime's probes and the background stops run) until
    everything desired is ready and nothing is being stopped; the last verdict."""
    verdicts = []
    for _ in range(turns):
        verdicts.append(await ctl.turn())
        await ctl.tasks.idle()
        for _ in range(3):
            await asyncio.sleep(0)
        status = ctl.status()
        if status["converged"] and not ctl.instances.stopping and ctl.verdict.startswith("steady"):
            return ctl.verdict
    raise AssertionError(f"not converged after {turns} turns: {verdicts[-5:]}")


def workloads(ctl: Controller, site: str | None = None) -> list[dict[str, Any]]:
    return [
        row
        for row in ctl.status()["instances"]
        if row["kind"] == Kind.WORKLOAD.value and row["desired"] and site in (None, row["site"])
    ]


async def test_apply_release_scale_crash_and_restart_without_a_process(lab: Lab) -> None:
    ctl = await lab.controller()
    result = await ctl.apply(SPEC, str(lab.tmp / "alwayson.yaml"), "test")
    assert [str(c) for c in result.changes] and ctl.verdict == "starting"

    first = await ctl.turn()
    assert first.startswith("started 8: accounts-jakarta-1, accounts-jakarta-2,")
    assert await settle(ctl) == "steady: 8/8 processes ready"
    gateway_routes = lab.tables.pushed["127.1.0.1:9901"]["routes"]
    assert {b["id"] for b in gateway_routes[0]["backends"]} >= {
        "accounts-jakarta-1",
        "accounts-jakarta-2",
    }

    # The autoscaler wants four in jakarta: not drift, and what a release is planned from.
    await ctl.autoscale("accounts", "jakarta", 4)
    assert (await ctl.turn()).startswith("started 2: accounts-jakarta-3, accounts-jakarta-4")
    assert await settle(ctl) == "steady: 10/10 processes ready"
    assert ctl.status()["drift"] == []

    release = await ctl.deploy("accounts", "1.1.0", None, None, None, "test")
    assert release.strategy == "canary"
    first_stage = release.stages[0].counts
    assert first_stage["jakarta"].stable + first_stage["jakarta"].candidate >= 4
    assert release.stages[-1].counts["jakarta"].candidate == 4
    assert release.stages[-1].counts["surabaya"].candidate == 2
    with pytest.raises(Exception, match="being released"):
        await ctl.scale("accounts", 1, None, "test")

    await settle(ctl)
    await ctl.releases.promote("accounts", full=True)  # `alwayson release promote --full`
    for _ in range(40):
        await settle(ctl)
        running = ctl.releases.running("accounts")
        if running is None:
            break
        lab.clock.advance(1.0)
    else:
        raise AssertionError(f"release still running: {running.summary()}")
    assert ctl.releases.active == {}
    (history,) = await ctl.releases.history("accounts")
    assert history["phase"] == ReleasePhase.SUCCEEDED.value, str(history)[-1500:]
    assert {row["version"] for row in workloads(ctl)} == {"1.1.0"}
    assert len(workloads(ctl, "jakarta")) == 4 and len(workloads(ctl, "surabaya")) == 2

    # Drift from the spec with `alwayson scale`, until the next apply.
    said = await ctl.scale("accounts", 3, "surabaya", "test")
    assert said == "accounts: 3 replicas in surabaya (drift from the spec until `apply`)"
    assert await settle(ctl) == "steady: 11/11 processes ready"
    assert ctl.status()["drift"] == [{"service": "accounts", "site": "surabaya", "replicas": 3}]

    # A crash: restarted after its backoff, with the reason in the verdict.
    victim = workloads(ctl, "surabaya")[0]["id"]
    lab.world.crash(victim, exit_code=3)
    await asyncio.sleep(0)
    verdict = await ctl.turn()
    assert verdict == f"waiting: {victim} waits to restart (exited with code 3; backoff 0.5s)"
    lab.clock.advance(0.5)
    assert await ctl.turn() == f"restarted {victim} (after exited with code 3; backoff 0.5s)"
    assert await settle(ctl) == "steady: 11/11 processes ready"
    row = next(r for r in workloads(ctl) if r["id"] == victim)
    assert row["restarts"] == 1 and row["last_exit"] == "exited with code 3"

    # The controller dies; a new one over the same store and world adopts, restarts nothing.
    pids = {row["id"]: row["pid"] for row in ctl.status()["instances"]}
    await ctl.tasks.close()
    again = await lab.controller()
    assert await settle(again) == "steady: 11/11 processes ready"
    rows = again.status()["instances"]
    assert {row["id"]: row["pid"] for row in rows} == pids
    assert all(row["adopted"] for row in rows)
    assert again.status()["drift"] == [{"service": "accounts", "site": "surabaya", "replicas": 3}]
    assert {row["version"] for row in workloads(again)} == {"1.1.0"}
    assert all(s.phase is Phase.READY for s in again.runtime.statuses())


class GatewayTraffic:
    """The site gateways as the observe loop scrapes them: at every scrape each has served
    ten more requests of each version of accounts, all 2xx (``errors`` makes the candidate's
    5xx). A fake at the scraper's boundary: the store, the engine and the analysis are real."""

    timeout = 2.0

    def __init__(self, candidate: str, errors: bool = False) -> None:
        self.candidate = candidate
        self.errors = errors
        self.served: dict[tuple[str, str], int] = {}

    async def scrape_all(self, targets: list[Target], at: float) -> list[Sample]:
        out = []
        for target in targets:
            out.append(Sample("up", dict(target.labels), 1.0))
            if target.labels.get("job") != "gateways":
                continue
            site = target.labels["gateway_site"]
            for version in ("1.0.0", self.candidate):
                key = (target.labels["instance"], version)
                self.served[key] = self.served.get(key, 0) + 10
                code = "5xx" if self.errors and version == self.candidate else "2xx"
                labels = {
                    **target.labels,
                    "service": "accounts",
                    "site": site,
                    "version": version,
                    "code": code,
                }
                out.append(Sample(REQUESTS, labels, float(self.served[key])))
        return out

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("errors", [False, True], ids=["healthy", "failing"])
async def test_a_canary_is_judged_on_what_the_observe_loop_scraped(lab: Lab, errors: bool) -> None:
    ctl = await lab.controller()
    await ctl.apply(SPEC, str(lab.tmp / "alwayson.yaml"), "test")
    await settle(ctl)
    ctl.observatory.scraper = GatewayTraffic("1.1.0", errors)  # type: ignore[assignment]
    observing = asyncio.create_task(ctl.observatory.run())
    release = await ctl.deploy("accounts", "1.1.0", None, None, None, "test")
    assert release.candidate.label == "1.1.0"
    for _ in range(60):
        await settle(ctl)
        if ctl.releases.running("accounts") is None:
            break
        lab.clock.advance(1.0)
    (history,) = await ctl.releases.history("accounts")
    stage = history["history"][0]
    assert stage["name"] == "canary 25%" and stage["analyses"] > 0, stage
    if errors:
        assert history["phase"] == ReleasePhase.ROLLED_BACK.value
        assert {row["version"] for row in workloads(ctl)} == {"1.0.0"}
    else:
        assert history["phase"] == ReleasePhase.SUCCEEDED.value, history["message"]
        assert {row["version"] for row in workloads(ctl)} == {"1.1.0"}
    observing.cancel()
    await asyncio.gather(observing, return_exceptions=True)
    await ctl.tasks.close()
    await ctl.observatory.close()
