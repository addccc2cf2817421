"""The autoscaler: HPA's algorithm on an injected clock (minutes of windows in
milliseconds of test time)."""

from __future__ import annotations

import json
import math
from typing import Any

import promql_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.scaling.hpa import Autoscaler, AutoscalerState, Decision
from alwayson.scaling.queries import autoscale_queries, measurement, promql_range
from alwayson.spec.observing import Autoscale, ScalePolicy, Targets
from alwayson.util.clocks import ManualClock


def autoscale(**overrides: Any) -> Autoscale:
    fields: dict[str, Any] = {"min": 1, "max": 20, "targets": Targets(rps=50.0)}
    fields.update(overrides)
    return Autoscale(**fields)


def roomy_up() -> ScalePolicy:
    """Scale-up without a practical rate limit, to look at one step at a time."""
    return ScalePolicy(stabilization=0.0, max_instances=100)


# --- scaling up ----------------------------------------------------------------------


def test_a_step_up_scales_at_once() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(scale_up=roomy_up()), "accounts", "jakarta")

    decision = scaler.decide(current=2, ready=2, metrics={"rps": 360.0}, now=clock.wall())

    assert decision.desired == 8  # ceil(360 / 50)
    assert decision.changed
    assert decision.raw == decision.stabilized == 8
    assert decision.reason == ("scale up 2 → 8: rps 180/s per instance vs target 50 (ratio 3.6)")
    rps = decision.metrics[0]
    assert (rps.measured, rps.value, rps.target, rps.ratio) == (360.0, 180.0, 50.0, 3.6)
    assert rps.recommendation == 8


def test_the_default_scale_up_rate_allows_four_instances_or_double_per_15s() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(max=40), "accounts", "jakarta")

    first = scaler.decide(current=2, ready=2, metrics={"rps": 1000.0}, now=clock.wall())
    assert first.desired == 6  # max(2 + 4, 2 * 2)
    assert first.reason == (
        "scale up 2 → 6: rps 500/s per instance vs target 50 (ratio 10); "
        "limited to 6 by the scale-up rate (4 instances or 100% per 15s)"
    )
    clock.advance(15)
    second = scaler.decide(current=6, ready=6, metrics={"rps": 1000.0}, now=clock.wall())
    assert second.desired == 12  # max(6 + 4, 6 * 2): the first step left the period


def test_a_ratio_within_tolerance_changes_nothing() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(scale_down=ScalePolicy(stabilization=0.0)))

    for per_instance in (45.5, 50.0, 54.5):
        decision = scaler.decide(4, 4, {"rps": 4 * per_instance}, clock.wall())
        assert decision.desired == 4, per_instance
        assert decision.metrics[0].note == "within tolerance"
        assert decision.reason.startswith("hold at 4: rps")
        clock.advance(5)

    assert scaler.decide(4, 4, {"rps": 4 * 55.5}, clock.wall()).desired == 5
    clock.advance(5)
    assert scaler.decide(4, 4, {"rps": 4 * 44.5}, clock.wall()).desired == 4  # ceil(3.56)
    clock.advance(5)
    assert scaler.decide(4, 4, {"rps": 4 * 37.0}, clock.wall()).desired == 3


# --- scaling down --------------------------------------------------------------------


def test_scale_down_waits_300s_then_goes_to_the_highest_recommendation_of_the_window() -> None:
    clock = ManualClock()
    start = clock.wall()
    scaler = Autoscaler(autoscale(), "accounts", "jakarta")

    assert scaler.decide(10, 10, {"rps": 500.0}, clock.wall()).desired == 10
    clock.advance(60)
    assert scaler.decide(10, 10, {"rps": 300.0}, clock.wall()).desired == 10  # raw 6
    held = None
    while clock.wall() - start < 300 - 15:
        clock.advance(15)
        held = scaler.decide(10, 10, {"rps": 100.0}, clock.wall())  # raw 2
        assert held.desired == 10, clock.wall() - start
    assert held is not None
    assert held.raw == 2 and held.stabilized == 10
    assert held.reason == (
        "hold at 10: rps 10/s per instance vs target 50 (ratio 0.2); "
        "down to 2 waits for the 300s window (stabilized at 10)"
    )

    clock.advance(300 - (clock.wall() - start) - 0.001)
    assert scaler.decide(10, 10, {"rps": 100.0}, clock.wall()).desired == 10
    clock.advance(0.001)  # the raw 10 of the start is exactly 300s old: out of the window
    down = scaler.decide(10, 10, {"rps": 100.0}, clock.wall())
    assert down.desired == 6  # the highest recommendation left in the window
    assert down.reason.startswith("scale down 10 → 6: rps 10/s per instance")

    clock.advance(60)  # the 6 is now 300s old
    assert scaler.decide(6, 6, {"rps": 100.0}, clock.wall()).desired == 2


def test_a_new_autoscaler_does_not_scale_down_before_a_whole_window() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale())
    start = clock.wall()
    while clock.wall() - start < 299:
        assert scaler.decide(8, 8, {"rps": 50.0}, clock.wall()).desired == 8
        clock.advance(13)
    clock.advance(300 - (clock.wall() - start))
    assert scaler.decide(8, 8, {"rps": 50.0}, clock.wall()).desired == 1


# --- rate limits ---------------------------------------------------------------------


def test_scale_up_rate_counts_what_was_added_in_the_period() -> None:
    clock = ManualClock()
    policy = ScalePolicy(stabilization=0.0, max_instances=2, max_percent=50.0, period=60.0)
    scaler = Autoscaler(autoscale(max=100, scale_up=policy))

    step = scaler.decide(4, 4, {"rps": 1000.0}, clock.wall())
    assert step.desired == 6  # max(4 + 2, ceil(4 * 1.5))
    assert step.limit == ("limited to 6 by the scale-up rate (2 instances or 50% per 60s)")
    clock.advance(30)
    held = scaler.decide(6, 6, {"rps": 1000.0}, clock.wall())
    assert held.desired == 6  # the period started at 4: 6 is all it allows
    assert held.reason.startswith("hold at 6: rps")
    assert held.reason.endswith("limited to 6 by the scale-up rate (2 instances or 50% per 60s)")
    clock.advance(30)  # the first step is exactly 60s old: out of the period
    assert scaler.decide(6, 6, {"rps": 1000.0}, clock.wall()).desired == 9  # ceil(6 * 1.5)


def test_the_rate_limit_that_allows_the_larger_change_wins() -> None:
    clock = ManualClock()
    by_count = ScalePolicy(stabilization=0.0, max_instances=5, max_percent=10.0)
    by_percent = ScalePolicy(stabilization=0.0, max_instances=1, max_percent=50.0)

    up_count = Autoscaler(autoscale(max=100, scale_up=by_count))
    assert up_count.decide(10, 10, {"rps": 5000.0}, clock.wall()).desired == 15
    up_percent = Autoscaler(autoscale(max=100, scale_up=by_percent))
    assert up_percent.decide(10, 10, {"rps": 5000.0}, clock.wall()).desired == 15

    down_count = Autoscaler(autoscale(max=100, scale_down=by_count))
    assert down_count.decide(20, 20, {"rps": 50.0}, clock.wall()).desired == 15  # 20 - 5
    down_percent = Autoscaler(autoscale(max=100, scale_down=by_percent))
    assert down_percent.decide(20, 20, {"rps": 50.0}, clock.wall()).desired == 10


def test_scale_down_rate_counts_what_was_removed_in_the_period() -> None:
    clock = ManualClock()
    policy = ScalePolicy(stabilization=0.0, max_instances=1, max_percent=10.0, period=60.0)
    scaler = Autoscaler(autoscale(max=100, scale_down=policy))

    step = scaler.decide(20, 20, {"rps": 50.0}, clock.wall())
    assert step.desired == 18  # min(20 - 1, floor(20 * 0.9))
    assert step.limit == "limited to 18 by the scale-down rate (1 instances or 10% per 60s)"
    clock.advance(59.999)
    assert scaler.decide(18, 18, {"rps": 50.0}, clock.wall()).desired == 18
    clock.advance(0.001)
    assert scaler.decide(18, 18, {"rps": 50.0}, clock.wall()).desired == 16  # floor(18 * 0.9)


# --- bounds --------------------------------------------------------------------------


def test_min_and_max_clamp_the_recommendation() -> None:
    clock = ManualClock()
    fast = ScalePolicy(stabilization=0.0, max_instances=100)
    scaler = Autoscaler(autoscale(min=2, max=6, scale_up=fast, scale_down=fast))

    high = scaler.decide(4, 4, {"rps": 10_000.0}, clock.wall())
    assert (high.raw, high.desired, high.limit) == (200, 6, "capped at max 6")
    clock.advance(5)
    low = scaler.decide(6, 6, {"rps": 0.0}, clock.wall())
    assert (low.raw, low.desired, low.limit) == (0, 2, "held at min 2")


def test_a_count_outside_the_bounds_goes_to_the_bound_even_without_metrics() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(min=2, max=6))

    above = scaler.decide(9, 9, {"rps": None}, clock.wall())
    assert above.desired == 6
    assert above.reason == "scale down 9 → 6: 9 is above max (6)"
    below = scaler.decide(0, 0, {}, clock.wall())
    assert below.desired == 2
    assert below.reason == "scale up 0 → 2: 0 is below min (2)"


# --- several metrics, missing metrics ------------------------------------------------


def test_several_metrics_the_largest_recommendation_wins() -> None:
    clock = ManualClock()
    targets = Targets(rps=50.0, cpu=0.5, p95=0.2)
    scaler = Autoscaler(autoscale(targets=targets, scale_up=roomy_up()))

    decision = scaler.decide(4, 4, {"rps": 150.0, "cpu": 0.875, "p95": 0.25}, clock.wall())

    recommendations = {m.name: m.recommendation for m in decision.metrics}
    assert recommendations == {"rps": 3, "cpu": 7, "p95": 5}
    assert decision.desired == 7
    assert decision.reason == (
        "scale up 4 → 7: cpu 0.875 cores per instance vs target 0.5 (ratio 1.75)"
    )


def test_a_p95_above_target_is_described_in_milliseconds() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(targets=Targets(p95=0.25), scale_up=roomy_up()))
    decision = scaler.decide(2, 2, {"p95": 0.62}, clock.wall())
    assert decision.desired == 5  # ceil(2 * 2.48)
    assert decision.reason == "scale up 2 → 5: p95 620ms vs target 250ms (ratio 2.48)"


def test_missing_metrics_are_ignored() -> None:
    clock = ManualClock()
    targets = Targets(rps=50.0, cpu=0.5)
    scaler = Autoscaler(autoscale(targets=targets, scale_up=roomy_up()))

    decision = scaler.decide(2, 2, {"rps": None, "cpu": 1.5}, clock.wall())
    assert decision.desired == 6
    rps = decision.metrics[0]
    assert (rps.name, rps.recommendation, rps.note) == ("rps", None, "missing")

    clock.advance(5)
    nan = scaler.decide(6, 6, {"rps": math.nan, "cpu": 0.5}, clock.wall())
    assert nan.desired == 6
    assert nan.metrics[0].note == "missing"
    assert json.loads(json.dumps(nan.to_json(), allow_nan=False))["metrics"][0]["measured"] is None


def test_all_metrics_missing_changes_nothing() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(targets=Targets(rps=50.0, cpu=0.5)))

    for metrics in ({}, {"rps": None}, {"rps": None, "cpu": math.inf}):
        decision = scaler.decide(5, 5, metrics, clock.wall())
        assert decision.desired == 5
        assert not decision.changed
        assert decision.reason == "hold at 5: no metric available (rps, cpu missing)"
        clock.advance(5)


def test_a_metric_without_a_target_is_not_judged_and_an_unknown_one_is_refused() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(targets=Targets(rps=50.0), scale_up=roomy_up()))
    decision = scaler.decide(2, 2, {"rps": 100.0, "cpu": 8.0}, clock.wall())
    assert [m.name for m in decision.metrics] == ["rps"]
    assert decision.desired == 2
    with pytest.raises(ValueError, match="unknown autoscaling metrics: qps"):
        scaler.decide(2, 2, {"qps": 1.0}, clock.wall())


# --- instances that are not ready ----------------------------------------------------


def test_starting_instances_count_as_idle_when_scaling_up() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(scale_up=roomy_up()))

    # 6 wanted after a step, 3 of them still starting: 300 rps over 6 is the target.
    held = scaler.decide(6, 3, {"rps": 300.0}, clock.wall())
    assert held.desired == 6
    assert held.metrics[0].ratio == 2.0
    assert held.metrics[0].note == "within tolerance counting 3 unready as idle"

    clock.advance(5)
    more = scaler.decide(6, 3, {"rps": 450.0}, clock.wall())
    assert more.desired == 9  # ceil(450 / 50): the load, not 6 * 3
    assert more.reason == (
        "scale up 6 → 9: rps 150/s per instance vs target 50 (ratio 3), 3 unready counted as idle"
    )


def test_unready_instances_are_left_out_when_scaling_down() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(scale_down=ScalePolicy(stabilization=0.0)))
    decision = scaler.decide(6, 2, {"rps": 50.0}, clock.wall())
    assert decision.desired == 1  # the load of the 2 ready needs 1
    assert decision.metrics[0].note == "4 unready left out"


def test_with_nothing_ready_only_the_load_can_scale_and_only_up() -> None:
    clock = ManualClock()
    fast_down = ScalePolicy(stabilization=0.0)
    scaler = Autoscaler(autoscale(min=0, targets=Targets(rps=50.0, cpu=0.5), scale_down=fast_down))

    from_zero = scaler.decide(0, 0, {"rps": 120.0, "cpu": None}, clock.wall())
    assert from_zero.desired == 3
    assert from_zero.metrics[0].note == "no ready instance: the load over the target"

    clock.advance(5)
    broken = scaler.decide(2, 0, {"rps": 0.0, "cpu": 0.0}, clock.wall())
    assert broken.desired == 2  # nothing ready is no reason to remove anything

    clock.advance(5)
    idle = scaler.decide(0, 0, {"rps": 0.0}, clock.wall())
    assert idle.desired == 0


def test_ready_above_current_counts_as_current() -> None:
    clock = ManualClock()
    decision = Autoscaler(autoscale()).decide(4, 7, {"rps": 200.0}, clock.wall())
    assert decision.ready == 4
    assert decision.desired == 4


# --- persistence ---------------------------------------------------------------------


def test_a_restored_autoscaler_keeps_its_scale_down_window() -> None:
    clock = ManualClock()
    start = clock.wall()
    first = Autoscaler(autoscale(), "accounts", "jakarta")
    first.decide(10, 10, {"rps": 500.0}, clock.wall())
    clock.advance(200)
    first.decide(10, 10, {"rps": 100.0}, clock.wall())
    saved = json.loads(json.dumps(first.to_json()))

    clock.advance(100)  # 300s after the raw 10: the restored window lets it go
    restored = Autoscaler.from_json(autoscale(), saved)
    assert (restored.service, restored.site) == ("accounts", "jakarta")
    assert restored.decide(10, 10, {"rps": 100.0}, clock.wall()).desired == 2
    # Without the saved state, a restart would hold a whole window from now.
    fresh = Autoscaler(autoscale())
    assert fresh.decide(10, 10, {"rps": 100.0}, clock.wall()).desired == 10
    assert clock.wall() - start == 300


def test_a_restored_autoscaler_keeps_its_rate_limit_events() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(max=100))
    assert scaler.decide(4, 4, {"rps": 5000.0}, clock.wall()).desired == 8
    state = AutoscalerState.from_json(json.loads(json.dumps(scaler.state.to_json())))
    clock.advance(5)
    restored = Autoscaler(autoscale(max=100), state=state)
    assert restored.decide(8, 8, {"rps": 5000.0}, clock.wall()).desired == 8


def test_a_decision_round_trips_through_json() -> None:
    clock = ManualClock()
    targets = Targets(rps=50.0, cpu=0.5)
    decision = Autoscaler(autoscale(targets=targets), "accounts", "jakarta").decide(
        3, 2, {"rps": 400.0, "cpu": None}, clock.wall()
    )
    data = json.loads(json.dumps(decision.to_json()))
    assert data["changed"] is True
    assert data["rate_limited"] == decision.desired
    assert data["metrics"][0]["ratio"] == 4.0
    assert Decision.from_json(data) == decision


def test_due_follows_the_interval() -> None:
    clock = ManualClock()
    scaler = Autoscaler(autoscale(interval=5.0))
    assert scaler.due(clock.wall())
    scaler.decide(2, 2, {"rps": 100.0}, clock.wall())
    clock.advance(4.999)
    assert not scaler.due(clock.wall())
    clock.advance(0.001)
    assert scaler.due(clock.wall())


# --- where the metrics come from -----------------------------------------------------


def test_the_metric_queries_are_promql_of_one_service_in_one_site() -> None:
    queries = autoscale_queries("accounts", "jakarta", 15.0)
    assert queries["rps"] == (
        'sum(rate(alwayson_gateway_requests_total{service="accounts",site="jakarta"}[15s]))'
    )
    for text in queries.values():
        promql_parser.parse(text)
        assert 'service="accounts",site="jakarta"' in text
    assert promql_range(1.5) == "1500ms"
    assert measurement([]) is None
    assert measurement([math.nan]) is None
    assert measurement([2.5]) == 2.5


# --- properties ----------------------------------------------------------------------

policies = st.builds(
    ScalePolicy,
    stabilization=st.sampled_from([0.0, 15.0, 60.0, 300.0]),
    max_instances=st.integers(1, 6),
    max_percent=st.sampled_from([10.0, 50.0, 100.0, 200.0]),
    period=st.sampled_from([15.0, 60.0]),
)


@st.composite
def autoscalers(draw: st.DrawFn) -> Autoscale:
    low = draw(st.integers(0, 5))
    return Autoscale(
        min=low,
        max=draw(st.integers(max(low, 1), 30)),
        targets=Targets(rps=50.0, cpu=0.5, p95=0.2),
        tolerance=draw(st.sampled_from([0.0, 0.1, 0.3])),
        scale_up=draw(policies),
        scale_down=draw(policies),
    )


metric_values = st.one_of(st.none(), st.floats(0, 100_000, allow_nan=False))
steps = st.lists(
    st.tuples(
        st.floats(0.001, 200.0),  # seconds since the previous decision
        st.fixed_dictionaries({"rps": metric_values, "cpu": metric_values, "p95": metric_values}),
        st.floats(0.0, 1.0),  # share of instances ready
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(autoscalers(), st.integers(0, 40), steps)
def test_the_decision_is_always_within_min_and_max(
    spec: Autoscale, current: int, script: list[tuple[float, dict[str, float | None], float]]
) -> None:
    clock = ManualClock()
    scaler = Autoscaler(spec)
    for elapsed, metrics, ready_share in script:
        clock.advance(elapsed)
        decision = scaler.decide(current, int(current * ready_share), metrics, clock.wall())
        assert spec.min <= decision.desired <= spec.max
        current = decision.desired


@settings(max_examples=150, deadline=None)
@given(autoscalers(), st.data(), steps)
def test_no_scale_down_within_the_window_after_a_higher_recommendation(
    spec: Autoscale,
    data: st.DataObject,
    script: list[tuple[float, dict[str, float | None], float]],
) -> None:
    clock = ManualClock()
    scaler = Autoscaler(spec)
    current = data.draw(st.integers(spec.min, spec.max))
    recorded: list[tuple[float, int]] = []
    for elapsed, metrics, ready_share in script:
        clock.advance(elapsed)
        now = clock.wall()
        decision = scaler.decide(current, int(current * ready_share), metrics, now)
        if any(m.recommendation is not None for m in decision.metrics):
            recorded.append((now, decision.raw))
        if decision.desired < current:
            window = [r for t, r in recorded if t > now - spec.scale_down.stabilization]
            assert all(r <= decision.desired for r in window), (window, decision)
        current = decision.desired


@settings(max_examples=150, deadline=None)
@given(
    autoscalers(),
    st.data(),
    st.lists(st.tuples(st.floats(0.001, 400.0), st.floats(0.0, 1.0)), min_size=1, max_size=30),
    st.sampled_from(["rps", "cpu", "p95"]),
)
def test_a_metric_constant_at_its_target_never_changes_the_count(
    spec: Autoscale,
    data: st.DataObject,
    script: list[tuple[float, float]],
    name: str,
) -> None:
    clock = ManualClock()
    scaler = Autoscaler(spec)
    current = data.draw(st.integers(max(spec.min, 1), spec.max))
    for elapsed, ready_share in script:
        clock.advance(elapsed)
        ready = max(1, round(current * ready_share))
        at_target = {"rps": 50.0 * ready, "cpu": 0.5, "p95": 0.2}[name]
        decision = scaler.decide(current, ready, {name: at_target}, clock.wall())
        assert decision.desired == current, decision.reason
