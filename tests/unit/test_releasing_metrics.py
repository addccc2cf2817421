"""The release driver reads metrics from the observe loop's store: a fresh round on
request (``Observatory.refresh``), the gateways' counters per gateway, and the spec's
checks over the candidate's and the gateways' series only. No process, no socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.unit.controlparts import Parts
from tests.unit.controlparts import observatory as observatory_on

from alwayson.control.observing import Observatory
from alwayson.control.releasing import ReleaseDriver
from alwayson.metrics.exposition import parse_exposition
from alwayson.metrics.model import Sample
from alwayson.release.checks import CheckResult
from alwayson.release.model import Release, Routing, Stage, Template
from alwayson.runtime.base import Kind
from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import ReleasePolicy
from alwayson.store.memory import MemoryStore
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import TemporaryError

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1"
    run: python -m bank.accounts
    port: 8002
metrics: {scrape_interval: 1m, scrape_timeout: 2s}
"""
T0 = 1_800_000_000.0


def gateway_text(ok: int, errors: int) -> str:
    where = 'service="accounts",site="jakarta"'
    return (
        "# TYPE alwayson_gateway_requests_total counter\n"
        f'alwayson_gateway_requests_total{{{where},version="1",code="2xx"}} {ok}\n'
        f'alwayson_gateway_requests_total{{{where},version="2",code="5xx"}} {errors}\n'
        "# TYPE alwayson_gateway_local_responses_total counter\n"
        'alwayson_gateway_local_responses_total{service="accounts",code="503"} 2\n'
        "# TYPE unrelated gauge\nunrelated 5\n"
    )


def instance_text(errors: int) -> str:
    return f'# TYPE bank_requests_total counter\nbank_requests_total{{code="500"}} {errors}\n'


class Rounds(Observatory):
    """The observe loop with a scripted round: each tick appends ``next_round`` at T0 + n."""

    def __init__(self, *ports: Any) -> None:
        super().__init__(*ports)
        self.ticks: list[bool] = []
        self.next_round: list[Sample] = []
        self.fail: Exception | None = None

    async def tick(self, spec: Any, evaluate_now: bool = False, waiters: Any = ()) -> float:
        self.ticks.append(evaluate_now)
        if self.fail is not None:
            raise self.fail
        at = T0 + len(self.ticks)
        self.series.append(self.next_round, at)
        self.last_scrape = {"at": at}
        for waiter in waiters:
            waiter.set_result(at)
        return at


def scrape_of(target: str, job: str, text: str, **labels: str) -> list[Sample]:
    target_labels = {"job": job, "instance": target, **labels}
    return [*parse_exposition(text, target_labels), Sample("up", target_labels, 1.0)]


def status(ident: str, kind: Kind, ready: bool = True) -> Any:
    return SimpleNamespace(spec=SimpleNamespace(id=ident, kind=kind), ready=ready)


def setup(tmp_path: Path) -> tuple[ReleaseDriver, Rounds, Parts]:
    spec = load_spec_text(SPEC, tmp_path / "alwayson.yaml", check_commands=False).spec
    parts = Parts(spec)
    observatory = observatory_on(parts, tmp_path, cls=Rounds)
    driver = ReleaseDriver(MemoryStore(), ManualClock(), parts, parts, parts, parts, observatory)
    return driver, observatory, parts


def release_with_checks(checks: list[str]) -> Release:
    policy = ReleasePolicy.model_validate({"analysis": {"checks": checks}})
    return Release(
        id=1,
        service="accounts",
        strategy="canary",
        actor="test",
        reason="",
        stable=Template(version="1", run="x", label="1", color="a"),
        candidate=Template(version="2", run="x", label="2", color="b"),
        settings=policy.model_dump(mode="json"),
        stages=[Stage(name="canary 50%", counts={}, routing=Routing.WEIGHTED, analysis=True)],
        started_at=T0,
        stage_started_at=T0,
        settled_at=T0,
    )


def test_refresh_waits_for_a_round_that_starts_after_it_asked(tmp_path: Path) -> None:
    _, observatory, _ = setup(tmp_path)

    async def scenario() -> tuple[float, float, list[bool]]:
        loop = asyncio.create_task(observatory.run())
        await asyncio.sleep(0)  # the first round (T0 + 1) runs at once, unasked
        first = await observatory.refresh()  # the interval is a minute: this is a new round
        second = await observatory.refresh()
        observatory.fail = OSError("disk gone")
        with pytest.raises(TemporaryError, match="disk gone"):
            await observatory.refresh()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        return first, second, observatory.ticks

    first, second, ticks = asyncio.run(scenario())
    assert (first, second) == (T0 + 2, T0 + 3)
    assert ticks == [False, False, False, False]  # a refresh does not force an evaluation
    observatory.series.close()


def test_gateway_counters_come_from_the_store_per_ready_gateway(tmp_path: Path) -> None:
    driver, observatory, controller = setup(tmp_path)
    controller.statuses = [
        status("gw-jakarta", Kind.GATEWAY),
        status("gw-surabaya", Kind.GATEWAY),
        status("front", Kind.FRONTDOOR),
    ]
    observatory.next_round = [
        *scrape_of("gw-jakarta", "gateways", gateway_text(ok=10, errors=1)),
        *scrape_of("gw-surabaya", "gateways", gateway_text(ok=4, errors=0)),
        *scrape_of("front", "frontdoors", gateway_text(ok=99, errors=99)),
    ]

    async def scenario() -> Any:
        loop = asyncio.create_task(observatory.run())
        got = await driver.reading.scrape()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        return got

    at, samples = asyncio.run(scenario())
    assert at is not None and sorted(samples) == ["gw-jakarta", "gw-surabaya"]
    jakarta = samples["gw-jakarta"]
    assert jakarta.series[("accounts", "1")].by_class == {"2xx": 10}
    assert jakarta.series[("accounts", "2")].by_class == {"5xx": 1}
    assert jakarta.local_responses == {("accounts", "503"): 2}
    assert samples["gw-surabaya"].series[("accounts", "1")].by_class == {"2xx": 4}
    # a ready gateway that did not answer: no figures at all (the window is not judged)
    observatory.series.append(
        [Sample("up", {"job": "gateways", "instance": "gw-surabaya"}, 0.0)], at + 1
    )
    assert driver.reading.gateway_samples(at + 1) is None
    observatory.series.close()


def test_checks_see_the_candidate_and_the_gateways_only(tmp_path: Path) -> None:
    driver, observatory, _ = setup(tmp_path)
    for offset, errors in ((0.0, 0), (15.0, 30), (30.0, 60)):
        observatory.series.append(
            [
                *scrape_of(
                    "accounts-1",
                    "instances",
                    instance_text(errors),
                    service="accounts",
                    version="1",
                ),
                *scrape_of(
                    "accounts-2",
                    "instances",
                    instance_text(errors // 30),
                    service="accounts",
                    version="2",
                ),
                *scrape_of("gw", "gateways", gateway_text(ok=10, errors=errors)),
            ],
            T0 + offset,
        )
    release = release_with_checks(
        [
            'sum(rate(bank_requests_total{code="500"}[1m])) < 1',
            'sum(rate(alwayson_gateway_requests_total{code="5xx"}[1m])) < 1',
            "sum(rate(bank_requests_total[1m])) >",
        ]
    )
    results = driver.reading.checks(release, T0 + 30)
    candidate, gateways, broken = results
    # The stable's 60 errors (1/s over the minute, which would fail) are out of view;
    # the candidate's 2 are in it: from its first sample (the counter's zero) to the
    # last, nothing to extrapolate, 2 over the 60 s range.
    assert isinstance(candidate, CheckResult) and candidate.ok
    assert candidate.value == pytest.approx(2 / 60)
    assert isinstance(gateways, CheckResult) and not gateways.ok
    assert isinstance(broken, tuple) and broken[0] is False
    assert broken[1].startswith("sum(rate(bank_requests_total[1m])) >: cannot evaluate: ")
    assert driver.reading.checks(release, None)[0][0] is False  # type: ignore[index]
    observatory.series.close()
