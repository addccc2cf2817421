"""Release planning and stepping: pure functions driven by hand-made observations and time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.gateway.metrics import GatewayMetrics
from alwayson.metrics.exposition import parse_exposition
from alwayson.release.figures import GatewaySample, gateway_sample
from alwayson.release.model import Phase, Release, Routing, Stage, Template
from alwayson.release.stepping import (
    Observation,
    SiteView,
    abort,
    advance,
    canary_count,
    missing,
    plan_stages,
    promote,
    rolling_batches,
    start,
)
from alwayson.spec.models import ReleasePolicy

SITES = ["jakarta", "surabaya"]
REPLICAS = {"jakarta": 2, "surabaya": 2}


def parse_gateway_metrics(text: str) -> GatewaySample:
    """A gateway's /metrics text as the release driver reads it: through the one
    Prometheus text parser into samples, then its release counters."""
    return gateway_sample(parse_exposition(text, {}))


def policy(**data: Any) -> ReleasePolicy:
    base: dict[str, Any] = {"analysis": {"interval": 2, "min_requests": 10, "failure_limit": 2}}
    base.update(data)
    return ReleasePolicy.model_validate(base)


def release(strategy: str, pol: ReleasePolicy, now: float = 1000.0) -> Release:
    record = Release(
        id=1,
        service="accounts",
        strategy=strategy,  # type: ignore[arg-type]
        actor="test",
        reason="test",
        stable=Template(version="1.0", run="x", label="1.0", color="a"),
        candidate=Template(version="2.0", run="x", label="2.0", color="b"),
        settings=pol.model_dump(mode="json"),
        stages=plan_stages(strategy, pol, REPLICAS, SITES),
        started_at=0.0,
        stage_started_at=0.0,
    )
    return start(record, now, samples({}))


def samples(counts: dict[str, tuple[int, int, float]]) -> dict[str, GatewaySample]:
    """One gateway whose metrics saw, per version, (successes, 5xx, seconds each)."""
    metrics = GatewayMetrics()
    for version, (good, bad, seconds) in counts.items():
        stats = metrics.stats_for("accounts", version, "jakarta")
        for _ in range(good):
            stats.observe(200, seconds)
        for _ in range(bad):
            stats.observe(500, seconds)
    return {"gateway@jakarta": parse_gateway_metrics(metrics.render().decode())}


def settled_view(stage: Stage, now: float) -> dict[str, SiteView]:
    return {
        site: SiteView(
            stable_ready=c.stable,
            stable_running=c.stable,
            candidate_running=c.candidate,
            candidate_ready_since=(now - 100,) * c.candidate,
        )
        for site, c in stage.counts.items()
    }


def step(rel: Release, pol: ReleasePolicy, now: float, **obs: Any) -> Release:
    sites = obs.pop("sites", None) or settled_view(rel.current, now)
    return advance(rel, Observation(now=now, sites=sites, **obs), pol, REPLICAS).release


# ------------------------------------------------------------------ planning


def test_rolling_batches_keep_capacity_and_surge_bounds() -> None:
    assert [(c.stable, c.candidate) for c in rolling_batches(2, 1, 0)] == [(2, 1), (1, 2), (0, 2)]
    assert [(c.stable, c.candidate) for c in rolling_batches(2, 0, 1)] == [(1, 1), (0, 2)]
    assert rolling_batches(0, 1, 0) == []


@given(replicas=st.integers(1, 30), surge=st.integers(0, 5), unavailable=st.integers(0, 5))
def test_rolling_batches_never_break_the_limits(
    replicas: int, surge: int, unavailable: int
) -> None:
    if surge == 0 and unavailable == 0:
        with pytest.raises(ValueError):
            rolling_batches(replicas, surge, unavailable)
        return
    old, new = replicas, 0
    for batch in rolling_batches(replicas, surge, unavailable):
        assert batch.stable + batch.candidate <= replicas + surge
        # While the step runs: the stables it keeps plus the candidates already ready.
        assert batch.stable + new >= min(replicas - unavailable, replicas) or batch.stable == 0
        assert batch.stable + new >= replicas - unavailable
        old, new = batch.stable, batch.candidate
    assert (old, new) == (0, replicas)


def test_rolling_goes_secondary_site_first_with_analysis_between_sites() -> None:
    stages = plan_stages("rolling", policy(), REPLICAS, SITES)
    names = [s.name for s in stages]
    assert names[0].startswith("surabaya 1/3")
    assert "analysis after surabaya" in names
    assert names[-1].startswith("jakarta 3/3")
    assert stages[-1].counts["surabaya"].candidate == 2
    ordered = plan_stages("rolling", policy(rolling={"site_order": ["jakarta"]}), REPLICAS, SITES)
    assert ordered[0].name.startswith("jakarta")


def test_canary_stages_scale_with_the_weight_and_end_by_retiring_the_stable() -> None:
    stages = plan_stages("canary", policy(canary={"steps": [5, 50, 100]}), REPLICAS, SITES)
    assert [s.name for s in stages] == [
        "canary 5%",
        "canary 50%",
        "canary 100%",
        "old version stopped",
    ]
    assert stages[0].counts["jakarta"].candidate == 1 and stages[0].routing is Routing.WEIGHTED
    assert stages[2].routing is Routing.CANDIDATE and stages[2].counts["jakarta"].stable == 2
    assert stages[3].counts["jakarta"].stable == 0
    assert canary_count(10, 5) == 1 and canary_count(10, 50) == 5 and canary_count(0, 50) == 0


def test_blue_green_previews_switches_then_retires() -> None:
    stages = plan_stages("blue-green", policy(blue_green={"auto_promote": False}), REPLICAS, SITES)
    assert [s.routing for s in stages] == [Routing.PREVIEW, Routing.CANDIDATE, Routing.CANDIDATE]
    assert stages[0].manual


# ------------------------------------------------------------------ stepping


def test_a_release_not_begun_yet_is_left_alone() -> None:
    """An apply puts its release in place before it has begun (CI once caught a tick in
    between: the controller died on the empty history)."""
    pol = policy()
    begun = release("canary", pol)
    pending = begun.model_copy(update={"history": [], "started_at": 0.0})
    assert step(pending, pol, 1002) == pending
    assert step(begun, pol, 1002) != begun


def test_a_stage_waits_for_ready_candidates_and_min_ready_seconds() -> None:
    pol = policy(rolling={"min_ready_seconds": 5})
    rel = release("rolling", pol)
    stage = rel.current
    view = {
        "surabaya": SiteView(2, 2, 1, (1000.0,)),
        "jakarta": SiteView(2, 2, 0, ()),
    }
    assert missing(stage, Observation(now=1002, sites=view), 5) == ["surabaya: 0/1 new ready"]
    assert missing(stage, Observation(now=1006, sites=view), 5) == []
    waiting = step(rel, pol, 1002, sites=view)
    assert waiting.stage == 0 and "waiting" in waiting.message
    moved = step(rel, pol, 1006, sites=view)
    assert moved.stage == 1


def test_a_rolling_release_walks_every_stage_to_success() -> None:
    pol = policy()
    rel = release("rolling", pol)
    now = 1000.0
    for _ in range(50):
        if not rel.phase.active:
            break
        now += 3
        rel = step(rel, pol, now, samples=samples({"1.0": (50, 0, 0.01), "2.0": (50, 0, 0.01)}))
    assert rel.phase is Phase.SUCCEEDED
    assert [h.name for h in rel.history] == [s.name for s in rel.stages]
    assert rel.totals["requests_by_version"] == {"1.0": 50, "2.0": 50}


def test_progress_deadline_rolls_back() -> None:
    pol = policy(rolling={"progress_deadline": 10})
    rel = release("rolling", pol)
    stuck = {"surabaya": SiteView(2, 2, 1, ()), "jakarta": SiteView(2, 2, 0, ())}
    assert step(rel, pol, 1005, sites=stuck).phase is Phase.PROGRESSING
    failed = step(rel, pol, 1011, sites=stuck)
    assert failed.phase is Phase.ROLLING_BACK
    assert "made no progress in 10s" in failed.message
    assert failed.current.counts["surabaya"].stable == 2


def test_a_failed_new_instance_stops_the_release() -> None:
    pol = policy()
    rel = release("canary", pol)
    failed = step(rel, pol, 1001, candidate_failures=["accounts-jakarta-101 unhealthy: 503"])
    assert failed.phase is Phase.ROLLING_BACK
    assert "accounts-jakarta-101" in failed.message


def _canary(pol: ReleasePolicy) -> Release:
    rel = release("canary", pol)
    return step(rel, pol, 1000.5, samples=samples({}))  # settles; baseline of zero


def test_a_bad_canary_rolls_back_after_failure_limit_analyses() -> None:
    pol = policy(canary={"steps": [20, 100], "pause": 30})
    rel = _canary(pol)
    assert rel.settled_at == 1000.5
    bad = samples({"1.0": (400, 0, 0.005), "2.0": (70, 30, 0.005)})
    once = step(rel, pol, 1002.5, samples=bad)
    assert once.failures == 1 and once.phase is Phase.PROGRESSING
    assert once.first_bad_at == 1002.5
    assert "success rate" in once.decisions[-1].reasons[0]
    twice = step(once, pol, 1004.5, samples=bad)
    assert twice.phase is Phase.ROLLING_BACK
    assert twice.current.routing is Routing.STABLE  # the stable still runs in full: at once
    # Traffic is back on the stable once no gateway routes ordinary requests to the canary.
    restored = step(twice, pol, 1005.0, candidate_routed=False, samples=bad)
    assert restored.traffic_restored_at == 1005.0
    assert restored.rollback_seconds == 2.5
    done = restored
    for now in (1006.0, 1007.0, 1008.0):
        done = step(done, pol, now, candidate_routed=False, samples=bad)
    assert done.phase is Phase.ROLLED_BACK
    assert "analysis failed 2 times" in done.message


def test_a_slow_canary_fails_on_p99() -> None:
    pol = policy(canary={"steps": [20, 100], "pause": 30})
    rel = _canary(pol)
    slow = samples({"1.0": (400, 0, 0.004), "2.0": (100, 0, 0.4)})
    once = step(rel, pol, 1002.5, samples=slow)
    assert "p99" in once.decisions[-1].reasons[0]


def test_a_canary_without_traffic_waits_then_fails_the_step() -> None:
    pol = policy(canary={"steps": [20, 100], "pause": 4, "no_traffic_timeout": 6})
    rel = _canary(pol)
    quiet = samples({"1.0": (400, 0, 0.004), "2.0": (3, 0, 0.004)})
    rel = step(rel, pol, 1002.5, samples=quiet)
    assert rel.decisions[-1].outcome == "inconclusive"
    rel = step(rel, pol, 1005.0, samples=quiet)  # pause over, too few requests: waits
    assert rel.stage == 0 and "waiting for traffic (3/10" in rel.message
    rel = step(rel, pol, 1011.0, samples=quiet)
    assert rel.phase is Phase.ROLLING_BACK
    assert "canary received 3 requests, fewer than min_requests 10" in rel.message


def test_a_good_canary_passes_every_step() -> None:
    pol = policy(canary={"steps": [10, 50, 100], "pause": 4})
    rel = release("canary", pol)
    now = 1000.0
    good = {"1.0": 0, "2.0": 0}
    while rel.phase.active and now < 1100:
        now += 1
        good = {k: v + 20 for k, v in good.items()}
        rel = step(rel, pol, now, samples=samples({k: (v, 0, 0.004) for k, v in good.items()}))
    assert rel.phase is Phase.SUCCEEDED
    passed = {d.stage for d in rel.decisions if d.outcome == "pass"}
    assert passed == {"canary 10%", "canary 50%", "canary 100%"}


def test_manual_pause_waits_for_promote_then_goes_on() -> None:
    pol = policy(blue_green={"auto_promote": False, "scale_down_delay": 5})
    rel = release("blue-green", pol)
    rel = step(rel, pol, 1001, samples=samples({}))
    assert rel.phase is Phase.PAUSED and "release promote" in rel.message
    assert step(rel, pol, 1100, samples=samples({})).stage == 0  # no timeout on a manual pause
    rel = step(promote(rel, full=False), pol, 1101, samples=samples({}))
    assert rel.stage == 1 and rel.current.routing is Routing.CANDIDATE


def test_full_promotion_skips_holds_but_not_readiness() -> None:
    pol = policy(canary={"steps": [10, 50, 100], "pause": 60})
    rel = promote(release("canary", pol), full=True)
    not_ready = {"jakarta": SiteView(2, 2, 1, ()), "surabaya": SiteView(2, 2, 1, ())}
    assert step(rel, pol, 1001, sites=not_ready).stage == 0
    rel = step(rel, pol, 1001, samples=samples({}))
    assert rel.stage == 1


def test_abort_goes_back_to_the_stable_at_once() -> None:
    pol = policy()
    rel = release("canary", pol)
    aborted = abort(rel, 1003, REPLICAS, "ops")
    assert aborted.phase is Phase.ROLLING_BACK
    assert aborted.current.routing is Routing.STABLE
    assert "aborted by ops" in aborted.message


def test_a_rolling_release_rolls_back_through_restoring_the_stable() -> None:
    pol = policy()
    rel = release("rolling", pol)
    rel = step(rel, pol, 1003)  # surabaya 1/3 done
    rel = step(rel, pol, 1006)  # surabaya 2/3: 1 old, 2 new
    back = abort(rel, 1007, REPLICAS, "ops")
    assert back.current.routing is Routing.INSTANCES  # the candidate serves until stables are back
    assert back.current.counts["surabaya"].stable == 2
    assert back.current.counts["surabaya"].candidate == rel.current.counts["surabaya"].candidate
    assert back.stages[-1].counts["surabaya"].candidate == 0


def test_stepping_is_idempotent_for_the_same_observation() -> None:
    pol = policy(canary={"steps": [20, 100], "pause": 30})
    rel = _canary(pol)
    obs_samples = samples({"1.0": (10, 0, 0.01)})
    once = step(rel, pol, 1001.0, samples=obs_samples)
    assert step(once, pol, 1001.0, samples=obs_samples) == once


def test_a_rollback_does_not_wait_for_a_candidate_that_never_gets_ready() -> None:
    pol = policy()
    rel = release("rolling", pol)
    crashing = {"surabaya": SiteView(2, 2, 1, ()), "jakarta": SiteView(2, 2, 0, ())}
    back = step(rel, pol, 1001, sites=crashing, candidate_failures=["accounts-surabaya-101 exited"])
    assert back.phase is Phase.ROLLING_BACK
    restored = step(back, pol, 1002, sites=crashing, candidate_routed=False)
    assert restored.stage == back.stage + 1  # stables ready: on to removing the candidate
    gone = {"surabaya": SiteView(2, 2, 0, ()), "jakarta": SiteView(2, 2, 0, ())}
    assert step(restored, pol, 1003, sites=gone).phase is Phase.ROLLED_BACK
