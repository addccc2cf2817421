"""Planning a release and moving it forward: pure functions, time passed in.

:func:`plan_stages` turns a strategy into stages (target counts per site, a traffic split
and a gate); :func:`advance` takes the stored record and one observation of the platform
and returns the next record. The controller persists what ``advance`` returns before it
acts on it, so a restart continues exactly where the release was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alwayson.release.analysis import AnalysisSettings as Judging
from alwayson.release.analysis import analyse
from alwayson.release.checks import CheckResult
from alwayson.release.figures import GatewaySample, delta
from alwayson.release.model import (
    Counts,
    Decision,
    Phase,
    Release,
    Routing,
    Stage,
    StageRecord,
)
from alwayson.spec.models import ReleasePolicy

MAX_DECISIONS = 300


@dataclass(frozen=True)
class SiteView:
    """One site as the controller sees it now, for the service being released."""

    stable_ready: int = 0
    stable_running: int = 0
    candidate_running: int = 0
    candidate_ready_since: tuple[float, ...] = ()


@dataclass(frozen=True)
class Observation:
    now: float  # wall clock, seconds
    sites: Mapping[str, SiteView]
    candidate_failures: Sequence[str] = ()  # health failures of new instances this stage
    candidate_routed: bool = True  # some gateway still sends ordinary traffic to it
    samples: Mapping[str, GatewaySample] | None = None  # gateway id → its metrics now
    check_results: Sequence[CheckResult | tuple[bool, str]] = ()  # the spec's checks, judged


@dataclass
class Outcome:
    release: Release
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ planning


def default_site_order(workload_sites: Sequence[str]) -> list[str]:
    """The secondary site (last in the file) first, the primary (first in the file) last."""
    return list(reversed(workload_sites))


def rolling_batches(replicas: int, max_surge: int, max_unavailable: int) -> list[Counts]:
    """The (stable, candidate) counts one site goes through, each step safe on its own.

    At every step ``stable + candidate <= replicas + max_surge``, and what stays ready
    while the step runs (the stables kept plus the candidates of the step before) is at
    least ``replicas - max_unavailable``.
    """
    if replicas <= 0:
        return []
    floor = max(replicas - max_unavailable, 0)
    old, new = replicas, 0
    out: list[Counts] = []
    while old > 0 or new < replicas:
        old_t = max(0, min(old, floor - new))
        new_t = min(replicas, replicas + max_surge - old_t)
        if (old_t, new_t) == (old, new):  # cannot happen with surge or unavailable > 0
            raise ValueError("max_surge and max_unavailable cannot both be 0")
        out.append(Counts(stable=old_t, candidate=new_t))
        old, new = old_t, new_t
    return out


def plan_stages(
    strategy: str,
    policy: ReleasePolicy,
    replicas: Mapping[str, int],
    workload_sites: Sequence[str],
) -> list[Stage]:
    """The stages of a release; ``replicas`` per workload site (in file order)."""
    if strategy in ("rolling", "rollback"):
        return _rolling(policy, replicas, workload_sites, analyse_sites=strategy == "rolling")
    if strategy == "canary":
        return _canary(policy, replicas)
    if strategy == "blue-green":
        return _blue_green(policy, replicas)
    raise ValueError(f"unknown strategy {strategy!r}")


def _rolling(
    policy: ReleasePolicy,
    replicas: Mapping[str, int],
    workload_sites: Sequence[str],
    analyse_sites: bool,
) -> list[Stage]:
    settings = policy.rolling
    order = settings.site_order or default_site_order(workload_sites)
    order += [s for s in workload_sites if s not in order]
    counts = {site: Counts(stable=replicas.get(site, 0), candidate=0) for site in replicas}
    stages: list[Stage] = []
    for position, site in enumerate(order):
        r = replicas.get(site, 0)
        batches = rolling_batches(r, settings.max_surge, settings.max_unavailable)
        for number, batch in enumerate(batches, start=1):
            counts = {**counts, site: batch}
            stages.append(
                Stage(
                    name=f"{site} {number}/{len(batches)}: {batch.candidate} new, "
                    f"{batch.stable} old",
                    counts=counts,
                    routing=Routing.INSTANCES,
                )
            )
        more = any(replicas.get(s, 0) for s in order[position + 1 :])
        if batches and more and analyse_sites and settings.site_analysis > 0:
            stages.append(
                Stage(
                    name=f"analysis after {site}",
                    counts=counts,
                    routing=Routing.INSTANCES,
                    hold=settings.site_analysis,
                    analysis=True,
                )
            )
    if not stages:  # no replicas anywhere: one stage that swaps the (empty) versions
        stages.append(Stage(name="no instances to replace", counts=counts, routing=Routing.STABLE))
    return stages


def canary_count(replicas: int, weight: int) -> int:
    if replicas <= 0:
        return 0
    if weight >= 100:
        return replicas
    return max(1, math.ceil(replicas * weight / 100))


def _canary(policy: ReleasePolicy, replicas: Mapping[str, int]) -> list[Stage]:
    settings = policy.canary
    stages: list[Stage] = []
    for step in settings.steps:
        manual = step.pause == "manual"
        hold = settings.pause if step.pause is None or manual else float(step.pause)
        stages.append(
            Stage(
                name=f"canary {step.weight}%",
                counts={
                    site: Counts(stable=r, candidate=canary_count(r, step.weight))
                    for site, r in replicas.items()
                },
                routing=Routing.CANDIDATE if step.weight >= 100 else Routing.WEIGHTED,
                weight=step.weight,
                hold=0.0 if manual else hold,
                manual=manual,
                analysis=True,
                require_traffic=True,
            )
        )
    stages.append(_retire(replicas))
    return stages


def _blue_green(policy: ReleasePolicy, replicas: Mapping[str, int]) -> list[Stage]:
    settings = policy.blue_green
    both = {site: Counts(stable=r, candidate=r) for site, r in replicas.items()}
    return [
        Stage(
            name="preview",
            counts=both,
            routing=Routing.PREVIEW,
            hold=settings.analysis,
            manual=not settings.auto_promote,
            analysis=True,
        ),
        Stage(
            name="switched (old version kept for rollback)",
            counts=both,
            routing=Routing.CANDIDATE,
            hold=settings.scale_down_delay,
            analysis=True,
        ),
        _retire(replicas),
    ]


def _retire(replicas: Mapping[str, int]) -> Stage:
    return Stage(
        name="old version stopped",
        counts={site: Counts(stable=0, candidate=r) for site, r in replicas.items()},
        routing=Routing.CANDIDATE,
    )


def rollback_stages(release: Release, replicas: Mapping[str, int]) -> list[Stage]:
    """Back to the stable version: restore its instances, then remove the candidate's.

    Traffic leaves the candidate at once when the stable still runs at full strength
    (canary, blue-green); after a rolling release it leaves as the stables come back.
    """
    current = release.current.counts
    full = all(
        current.get(site, Counts(stable=0, candidate=0)).stable >= r for site, r in replicas.items()
    )
    restore = {
        site: Counts(stable=r, candidate=current.get(site, Counts(stable=0, candidate=0)).candidate)
        for site, r in replicas.items()
    }
    return [
        Stage(
            name=f"rollback: {release.stable.label} restored",
            counts=restore,
            routing=Routing.STABLE if full else Routing.INSTANCES,
            # The candidates serve until the stables are back, but a failing one must not
            # hold the rollback up: only the stables' readiness ends this stage.
            need_candidates=False,
        ),
        Stage(
            name=f"rollback: {release.candidate.label} removed",
            counts={site: Counts(stable=r, candidate=0) for site, r in replicas.items()},
            routing=Routing.STABLE,
        ),
    ]


# ------------------------------------------------------------------ stepping


def start(release: Release, now: float, samples: Mapping[str, GatewaySample] | None) -> Release:
    """Fill in the timestamps and the baseline of a release that begins now."""
    release = release.model_copy(deep=True)
    release.started_at = now
    release.stage_started_at = now
    release.history = [StageRecord(name=release.stages[0].name, started_at=now)]
    release.release_baseline = _baseline(samples, release.service)
    release.message = f"started: {release.stages[0].name}"
    return release


def missing(stage: Stage, obs: Observation, min_ready: float) -> list[str]:
    """What keeps the stage from being settled, per site; empty when settled."""
    out: list[str] = []
    for site, want in stage.counts.items():
        view = obs.sites.get(site, SiteView())
        aged = sum(1 for t in view.candidate_ready_since if obs.now - t >= min_ready)
        if stage.need_candidates and aged < want.candidate:
            out.append(f"{site}: {aged}/{want.candidate} new ready")
        if view.stable_ready < want.stable:
            out.append(f"{site}: {view.stable_ready}/{want.stable} old ready")
        if view.stable_running > want.stable:
            out.append(f"{site}: {view.stable_running - want.stable} old to stop")
        if view.candidate_running > want.candidate:
            out.append(f"{site}: {view.candidate_running - want.candidate} new to stop")
    return out


def advance(
    release: Release,
    obs: Observation,
    policy: ReleasePolicy,
    replicas: Mapping[str, int],
) -> Outcome:
    """One tick of a release: settle, analyse, hold, then the next stage (or roll back)."""
    rel = release.model_copy(deep=True)
    out = Outcome(rel)
    # A release that has not begun yet (an apply puts it in place before ``start`` has
    # read its baseline, so no cycle sees the new version without it) is left alone.
    if not rel.phase.active or not rel.history:
        return out
    now = obs.now
    stage = rel.current
    record = rel.history[-1]
    rolling_back = rel.phase is Phase.ROLLING_BACK

    if rolling_back and rel.traffic_restored_at is None and not obs.candidate_routed:
        rel.traffic_restored_at = now
        out.notes.append(f"all traffic back on {rel.stable.label}")
    if not rolling_back and obs.candidate_failures:
        _roll_back(rel, out, now, replicas, f"a new instance failed: {obs.candidate_failures[0]}")
        return out

    if rel.settled_at is None:
        lacking = missing(stage, obs, policy.rolling.min_ready_seconds)
        if lacking:
            waited = now - rel.stage_started_at
            if not rolling_back and waited > policy.rolling.progress_deadline:
                _roll_back(
                    rel,
                    out,
                    now,
                    replicas,
                    f"stage {stage.name!r} made no progress in "
                    f"{policy.rolling.progress_deadline:g}s ({'; '.join(lacking)})",
                )
            else:
                rel.message = f"{stage.name}: waiting ({'; '.join(lacking)})"
            return out
        rel.settled_at = now
        rel.last_analysis_at = now
        record.settled_at = now
        rel.stage_baseline = _baseline(obs.samples, rel.service)

    if stage.analysis and not rolling_back and not rel.full_promote:
        interval = policy.analysis.interval
        if obs.samples is not None and now - (rel.last_analysis_at or now) >= interval:
            decision = _analyse(rel, obs, policy)
            rel.last_analysis_at = now
            record.analyses += 1
            record.last = decision
            _remember(rel, decision)
            if decision.outcome == "fail":
                rel.failures += 1
                if rel.first_bad_at is None:
                    rel.first_bad_at = now
                if rel.failures >= policy.analysis.failure_limit:
                    _roll_back(
                        rel,
                        out,
                        now,
                        replicas,
                        f"analysis failed {rel.failures} times: " + "; ".join(decision.reasons),
                    )
                    return out
                out.notes.append(f"{stage.name}: analysis failed: {'; '.join(decision.reasons)}")

    held = now - rel.settled_at
    skip = rel.promote_requested or rel.full_promote or rolling_back
    if stage.manual and not skip:
        rel.phase = Phase.PAUSED
        rel.message = f"{stage.name}: paused; `alwayson release promote {rel.service}` goes on"
        return out
    if held < stage.hold and not skip:
        rel.message = f"{stage.name}: {held:.0f}/{stage.hold:g}s"
        return out
    if stage.require_traffic and not skip:
        seen = int(record.last.figures.get("candidate_requests", 0)) if record.last else 0
        wanted = policy.analysis.min_requests
        if seen < wanted or record.last is None or record.last.outcome == "fail":
            if held >= stage.hold + policy.canary.no_traffic_timeout:
                why = (
                    f"canary received {seen} requests, fewer than min_requests {wanted}"
                    if seen < wanted
                    else "the last analysis failed"
                )
                _remember(rel, Decision(at=now, stage=stage.name, outcome="failed", reasons=[why]))
                _roll_back(rel, out, now, replicas, f"stage {stage.name!r} failed: {why}")
            else:
                rel.message = (
                    f"{stage.name}: waiting for traffic ({seen}/{wanted} candidate requests)"
                )
            return out
    _next_stage(rel, out, now, obs)
    return out


def _next_stage(rel: Release, out: Outcome, now: float, obs: Observation) -> None:
    record = rel.history[-1]
    record.ended_at = now
    record.outcome = "done"
    if rel.stage + 1 >= len(rel.stages):
        rel.phase = Phase.ROLLED_BACK if rel.phase is Phase.ROLLING_BACK else Phase.SUCCEEDED
        rel.ended_at = now
        rel.totals = _totals(rel, obs.samples)
        rel.message = (
            f"{rel.candidate.label} released"
            if rel.phase is Phase.SUCCEEDED
            else f"rolled back to {rel.stable.label}: {rel.rollback_reason}"
        )
        out.notes.append(rel.message)
        return
    rel.stage += 1
    rel.phase = Phase.ROLLING_BACK if rel.phase is Phase.ROLLING_BACK else Phase.PROGRESSING
    rel.stage_started_at = now
    rel.settled_at = None
    rel.promote_requested = False
    rel.history.append(StageRecord(name=rel.current.name, started_at=now))
    rel.message = f"{rel.current.name}: starting"
    out.notes.append(f"stage {rel.stage + 1}/{len(rel.stages)}: {rel.current.name}")


def _roll_back(
    rel: Release, out: Outcome, now: float, replicas: Mapping[str, int], reason: str
) -> None:
    if rel.first_bad_at is None:
        rel.first_bad_at = now
    stages = rollback_stages(rel, replicas)
    record = rel.history[-1]
    record.ended_at = now
    record.outcome = "failed"
    rel.stages = [*rel.stages[: rel.stage + 1], *stages]
    rel.stage += 1
    rel.phase = Phase.ROLLING_BACK
    rel.stage_started_at = now
    rel.settled_at = None
    rel.promote_requested = False
    rel.full_promote = False
    rel.history.append(StageRecord(name=rel.current.name, started_at=now))
    rel.message = f"rolling back: {reason}"
    rel.rollback_reason = reason
    _remember(rel, Decision(at=now, stage=record.name, outcome="rollback", reasons=[reason]))
    out.notes.append(rel.message)


def abort(release: Release, now: float, replicas: Mapping[str, int], actor: str) -> Release:
    """Back to the stable version at once (`alwayson release abort`)."""
    rel = release.model_copy(deep=True)
    _roll_back(rel, Outcome(rel), now, replicas, f"aborted by {actor}")
    return rel


def promote(release: Release, full: bool) -> Release:
    """Skip the current hold or manual pause (``full``: every gate to the end)."""
    rel = release.model_copy(deep=True)
    rel.promote_requested = True
    rel.full_promote = rel.full_promote or full
    if rel.phase is Phase.PAUSED:
        rel.phase = Phase.PROGRESSING
    return rel


def _analyse(rel: Release, obs: Observation, policy: ReleasePolicy) -> Decision:
    assert obs.samples is not None
    totals = delta(_samples(rel.stage_baseline), _only(obs.samples, rel.service))
    candidate = totals.figures(rel.service, rel.candidate.label)
    stable = totals.figures(rel.service, rel.stable.label)
    settings = policy.analysis
    judged = analyse(
        candidate,
        stable,
        Judging(
            min_requests=settings.min_requests,
            min_success_rate=settings.min_success_rate,
            success_tolerance=settings.success_tolerance,
            max_p99_increase=settings.max_p99_increase,
            max_p99=settings.max_p99,
        ),
        obs.check_results,
    )
    figures = dict(judged.figures)
    figures["dropped"] = totals.dropped(rel.service)
    return Decision(
        at=obs.now,
        stage=rel.current.name,
        outcome=judged.outcome,
        reasons=list(judged.reasons),
        figures=figures,
    )


def _remember(rel: Release, decision: Decision) -> None:
    rel.decisions.append(decision)
    if len(rel.decisions) > MAX_DECISIONS:
        # Keep the first decisions (how it started) and the most recent ones.
        rel.decisions = rel.decisions[:20] + rel.decisions[-(MAX_DECISIONS - 20) :]


def _only(samples: Mapping[str, GatewaySample], service: str) -> dict[str, GatewaySample]:
    return {gw: sample.only(service) for gw, sample in samples.items()}


def _baseline(samples: Mapping[str, GatewaySample] | None, service: str) -> dict[str, Any]:
    if samples is None:
        return {}
    return {gw: sample.only(service).to_json() for gw, sample in samples.items()}


def _samples(stored: Mapping[str, Any]) -> dict[str, GatewaySample]:
    return {gw: GatewaySample.from_json(data) for gw, data in stored.items()}


def _totals(rel: Release, samples: Mapping[str, GatewaySample] | None) -> dict[str, Any]:
    if samples is None:
        return rel.totals
    return totals_of(rel, samples)


def totals_of(rel: Release, samples: Mapping[str, GatewaySample]) -> dict[str, Any]:
    """Requests by version, failed and dropped since the release began (JSON-ready)."""
    totals = delta(_samples(rel.release_baseline), _only(samples, rel.service))
    versions = totals.versions(rel.service)
    by_version = {label: fig.requests for label, fig in versions.items() if label}
    failed = sum(fig.errors for fig in versions.values())
    return {
        "requests_by_version": by_version,
        "requests": sum(fig.requests for fig in versions.values()),
        "failed": failed,
        "dropped": totals.dropped(rel.service),
    }
