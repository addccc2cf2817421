"""What a release is judged on: its instances per site and version, the gateways'
counters and the spec's checks, all read from one snapshot and the metrics store the
observe loop fills (a fresh round on request). No HTTP client, no text parsing here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from alwayson.metrics.model import Sample
from alwayson.metrics.promql import QueryError
from alwayson.release.checks import CheckResult, judge
from alwayson.release.figures import (
    DURATION,
    LOCAL_RESPONSES,
    REQUESTS,
    GatewaySample,
    gateway_sample,
)
from alwayson.release.model import Release
from alwayson.release.stepping import Observation, SiteView, totals_of
from alwayson.runtime.base import Kind
from alwayson.runtime.base import Phase as RunPhase
from alwayson.spec.models import ReleasePolicy
from alwayson.util.errors import AlwaysonError

if TYPE_CHECKING:
    from alwayson.control.ports import Figures, StateReader
    from alwayson.control.state import PlatformState
    from alwayson.util.clocks import Clock

log = logging.getLogger("alwayson.releases")

GATEWAY_SERIES = (
    f'{{job="gateways",__name__=~"{REQUESTS}|{LOCAL_RESPONSES}|{DURATION}_(bucket|sum)"}}'
)
_UP = 'up{job="gateways"}'


class ReleaseReading:
    def __init__(self, view: StateReader, figures: Figures, clock: Clock) -> None:
        self.view = view
        self.figures = figures
        self.clock = clock

    def checks(self, release: Release, at: float | None) -> list[CheckResult | tuple[bool, str]]:
        """The spec's checks at ``at`` (the fresh round), over the candidate's own series
        and the gateways', evaluated as alert rules are (see :mod:`alwayson.release.checks`)."""
        checks = ReleasePolicy.model_validate(release.settings).analysis.checks
        if not checks or not release.current.analysis or release.settled_at is None:
            return []
        if at is None:
            return [(False, f"{check}: cannot evaluate: no fresh metrics") for check in checks]
        service, candidate = release.service, release.candidate.label

        def in_view(_: str, labels: Mapping[str, str]) -> bool:
            job = labels.get("job")
            return job == "gateways" or (
                job == "instances"
                and labels.get("service") == service
                and labels.get("version") == candidate
            )

        engine = self.figures.engine_for(in_view)
        results: list[CheckResult | tuple[bool, str]] = []
        for check in checks:
            try:
                compared = engine.compare(check, at)
            except QueryError as exc:
                results.append((False, f"{check}: cannot evaluate: {exc}"))
                continue
            results.append(judge(check, compared.operand, compared.kept))
        return results

    def observe(
        self,
        release: Release,
        samples: dict[str, GatewaySample] | None,
        checks: list[CheckResult | tuple[bool, str]],
        failed: list[tuple[float, str]],
    ) -> Observation:
        state = self.view.state()
        sites: dict[str, dict[str, Any]] = {}
        for status in state.statuses:
            spec = status.spec
            if spec.kind is not Kind.WORKLOAD or spec.service != release.service:
                continue
            if status.phase is RunPhase.EXITED:
                continue
            view = sites.setdefault(spec.site, {"sr": 0, "s": 0, "c": 0, "since": []})
            routed = status.ready and spec.id not in state.stopping
            if spec.version == release.candidate.label:
                view["c"] += 1
                if routed and status.ready_since is not None:
                    view["since"].append(status.ready_since)
            else:
                view["s"] += 1
                if routed:
                    view["sr"] += 1
        failures = [text for at, text in failed if at >= release.stage_started_at]
        return Observation(
            now=self.clock.wall(),
            sites={
                site: SiteView(v["sr"], v["s"], v["c"], tuple(v["since"]))
                for site, v in sites.items()
            },
            candidate_failures=failures,
            candidate_routed=self.candidate_routed(release, state),
            samples=samples,
            check_results=checks,
        )

    def candidate_routed(self, release: Release, state: PlatformState) -> bool:
        for ident, table in state.pushed.items():
            inst = state.desired.get(ident)
            if inst is None or inst.kind is not Kind.GATEWAY:
                continue
            for route in table.get("routes", []):
                if route.get("service") != release.service:
                    continue
                for backend in route.get("backends", []):
                    if backend.get("version") == release.candidate.label and backend.get(
                        "weight", 0
                    ):
                        return True
        return False

    async def scrape(self) -> tuple[float | None, dict[str, GatewaySample] | None]:
        """A fresh round of the observe loop, and every ready site gateway's counters in it
        (None when one was not read). The round's time comes first (None: no round)."""
        try:
            at = await self.figures.refresh()
        except AlwaysonError as exc:
            log.warning("gateway metrics not read: %s", exc)
            return None, None
        return at, self.gateway_samples(at)

    def gateway_samples(self, at: float) -> dict[str, GatewaySample] | None:
        """The counters of every ready site gateway as the store holds them at ``at``."""
        gateways = [
            s.spec.id for s in self.view.state().statuses if s.spec.kind is Kind.GATEWAY and s.ready
        ]
        try:
            up = {p.labels.get("instance"): p.value for p in self.figures.query(_UP, at)}
            found = self.figures.query(GATEWAY_SERIES, at)
        except QueryError as exc:
            log.warning("gateway metrics not read: %s", exc)
            return None
        missing = [g for g in gateways if up.get(g) != 1.0]
        if missing:
            log.warning("gateway metrics not read: %s did not answer", ", ".join(missing))
            return None
        by_gateway: dict[str, list[Sample]] = {g: [] for g in gateways}
        for point in found:
            samples = by_gateway.get(point.labels.get("instance", ""))
            if samples is not None:
                samples.append(Sample(point.labels.get("__name__", ""), point.labels, point.value))
        return {g: gateway_sample(samples) for g, samples in by_gateway.items()}

    def last_samples(self) -> dict[str, GatewaySample] | None:
        at = self.figures.last_round()
        return self.gateway_samples(at) if at is not None else None

    def live_totals(self, release: Release) -> dict[str, Any]:
        """The release's totals so far, from the observe loop's last round (no new one)."""
        samples = self.last_samples()
        if samples is None or not release.release_baseline:
            return release.totals
        return totals_of(release, samples)
