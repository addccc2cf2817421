"""Backend selection: locality, weights, load, ejection, retries avoiding the failed one,
requests pinned to a release track."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from alwayson.gateway.balancing import RoutePlan, Target, choose_target, compile_table
from alwayson.gateway.exchanges import CoarseClock
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.routes import Backend, Route, RouteTable
from alwayson.gateway.upstreams import Upstream

CLOCK = CoarseClock(100.0)
METRICS = GatewayMetrics()


def target(name: str, site: str = "jakarta", weight: int = 100, port: int = 8000) -> Target:
    return Target(
        id=name,
        service="accounts",
        site=site,
        version="1.0.0",
        weight=weight,
        upstream=Upstream("127.0.0.1", port, clock=CLOCK),
        stats=METRICS.stats_for("accounts", "1.0.0", site),
    )


def plan(*targets: Target, site: str = "jakarta") -> RoutePlan:
    local = [t for t in targets if t.site == site]
    remote = [t for t in targets if t.site != site]
    return RoutePlan("accounts", local, remote, METRICS.stats_for("accounts", "", ""))


def shares(route: RoutePlan, draws: int = 20_000, seed: int = 7) -> Counter[str]:
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    for _ in range(draws):
        chosen = choose_target(route, CLOCK.now, rand=rng.random)
        assert chosen is not None
        counts[chosen.id] += 1
    return counts


def test_own_site_is_preferred() -> None:
    route = plan(target("j1"), target("s1", site="surabaya"), target("j2"))
    assert set(shares(route, draws=2000)) == {"j1", "j2"}


def test_other_site_only_when_own_site_has_none_usable() -> None:
    j1 = target("j1")
    route = plan(j1, target("s1", site="surabaya"))
    j1.upstream.ejected_until = CLOCK.now + 5
    assert set(shares(route, draws=500)) == {"s1"}
    j1.upstream.ejected_until = CLOCK.now  # ejection over
    assert set(shares(route, draws=500)) == {"j1"}


def test_weights_split_traffic_at_rest() -> None:
    route = plan(target("stable", weight=90), target("canary", weight=10))
    counts = shares(route)
    assert 0.08 < counts["canary"] / 20_000 < 0.12


def test_weight_zero_gets_nothing() -> None:
    route = plan(target("stable", weight=100), target("drained", weight=0))
    assert set(shares(route, draws=1000)) == {"stable"}
    assert choose_target(plan(target("only", weight=0)), CLOCK.now) is None


def test_fewer_outstanding_wins_among_equals() -> None:
    busy, idle = target("busy"), target("idle")
    busy.upstream.outstanding = 10
    counts = shares(plan(busy, idle), draws=4000)
    # busy wins only when both draws are busy: about a quarter of the time
    assert counts["idle"] > 2.5 * counts["busy"]


def test_load_is_compared_per_unit_of_weight() -> None:
    big, small = target("big", weight=300), target("small", weight=100)
    big.upstream.outstanding = 6  # 0.02 per unit of weight
    small.upstream.outstanding = 3  # 0.03 per unit of weight
    counts = shares(plan(big, small), draws=4000)
    assert counts["big"] > counts["small"]


def test_ejected_backend_is_skipped_unless_it_is_the_only_one() -> None:
    a, b = target("a"), target("b")
    a.upstream.ejected_until = CLOCK.now + 5
    assert set(shares(plan(a, b), draws=500)) == {"b"}
    assert choose_target(plan(a), CLOCK.now) is a


def test_everything_ejected_still_tries_own_site_first() -> None:
    j, s = target("j"), target("s", site="surabaya")
    j.upstream.ejected_until = s.upstream.ejected_until = CLOCK.now + 5
    assert choose_target(plan(j, s), CLOCK.now) is j


def test_retry_goes_to_another_backend_even_in_another_site() -> None:
    j, s = target("j"), target("s", site="surabaya")
    route = plan(j, s)
    assert choose_target(route, CLOCK.now, exclude=j) is s
    # with no other backend the retry may use the same one
    assert choose_target(plan(j), CLOCK.now, exclude=j) is j


def test_retry_prefers_a_usable_backend_over_an_ejected_one() -> None:
    a, b, c = target("a"), target("b"), target("c")
    b.upstream.ejected_until = CLOCK.now + 5
    assert {choose_target(plan(a, b, c), CLOCK.now, exclude=a) for _ in range(50)} == {c}


def test_no_backends_is_none() -> None:
    assert choose_target(plan(), CLOCK.now) is None


def test_compile_table_shares_one_pool_per_address() -> None:
    backend = Backend(id="a-1", address="127.1.1.1:8000", site="jakarta", version="2")
    other = Backend(id="b-1", address="127.1.1.1:8000", site="surabaya", version="2")
    table = RouteTable(
        generation=1,
        site="jakarta",
        routes=[
            Route(service="a", path_prefix="/a", backends=[backend]),
            Route(service="b", path_prefix="/b", backends=[other]),
        ],
    )
    pools: dict[tuple[str, int], Upstream] = {}

    def upstream_for(host: str, port: int) -> Upstream:
        return pools.setdefault((host, port), Upstream(host, port, clock=CLOCK))

    matcher, plans = compile_table(table, "jakarta", upstream_for, METRICS)
    assert len(plans) == 2
    plan_a = matcher.match(b"", b"/a")
    plan_b = matcher.match(b"", b"/b")
    assert plan_a is not None and plan_b is not None
    assert plan_a.local[0].upstream is plan_b.remote[0].upstream
    assert plan_a.local[0].stats.site == "jakarta" and plan_b.remote[0].stats.site == "surabaya"
    assert len(pools) == 1


# -- pinning to a release track (X-Alwayson-Track, X-Alwayson-Preview) --------------------


def release_plan(*backends: Backend) -> RoutePlan:
    """The compiled plan of one route over ``backends``, for a gateway in jakarta."""
    table = RouteTable(
        generation=1,
        site="jakarta",
        routes=[Route(service="accounts", backends=list(backends))],
    )
    pools: dict[tuple[str, int], Upstream] = {}

    def upstream_for(host: str, port: int) -> Upstream:
        return pools.setdefault((host, port), Upstream(host, port, clock=CLOCK))

    (compiled,) = compile_table(table, "jakarta", upstream_for, METRICS)[1]
    return compiled


def release_backend(
    name: str, port: int, track: str = "stable", weight: int = 100, site: str = "jakarta"
) -> Backend:
    return Backend.model_validate(
        {
            "id": name,
            "address": f"127.1.1.1:{port}",
            "site": site,
            "version": "2.0" if track == "candidate" else "1.0",
            "weight": weight,
            "track": track,
        }
    )


def test_track_defaults_to_stable_and_is_validated() -> None:
    assert Backend(id="a", address="127.1.1.1:1", site="jakarta").track == "stable"
    with pytest.raises(ValidationError):
        release_backend("a", 1, track="canary")


def test_pinned_plans_hold_the_track_including_weight_zero() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green-j", 8002, track="candidate", weight=0),
        release_backend("green-s", 8003, track="candidate", weight=0, site="surabaya"),
    )
    assert [t.id for t in route.local] == ["blue"] and route.remote == ()
    green = route.pinned["candidate"]
    assert [t.id for t in green.local] == ["green-j"]
    assert [t.id for t in green.remote] == ["green-s"]
    assert green.local[0].weight == 1  # weight 0 counts as 1 within the pinned set
    assert green.unpinned is route
    assert [t.id for t in route.pinned["stable"].local] == ["blue"]
    assert route.pinned["stable"].local[0] is route.local[0]  # same target: same exclude


def test_route_without_the_track_has_no_pinned_plan() -> None:
    route = release_plan(release_backend("blue", 8001))
    assert "candidate" not in route.pinned


def test_pinned_request_goes_only_to_its_track_with_locality() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green-1", 8002, track="candidate", weight=0),
        release_backend("green-2", 8003, track="candidate", weight=0),
        release_backend("green-s", 8004, track="candidate", weight=0, site="surabaya"),
    )
    counts = shares(route.pinned["candidate"], draws=4000)
    assert set(counts) == {"green-1", "green-2"}
    assert 0.4 < counts["green-1"] / 4000 < 0.6  # weight 0 and 0: an even split
    assert set(shares(route, draws=1000)) == {"blue"}  # unpinned never gets a preview


def test_pinned_request_skips_an_ejected_backend_of_its_track() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green-j", 8002, track="candidate", weight=0),
        release_backend("green-s", 8003, track="candidate", weight=0, site="surabaya"),
    )
    green = route.pinned["candidate"]
    green.local[0].upstream.ejected_until = CLOCK.now + 5
    assert set(shares(green, draws=200)) == {"green-s"}


def test_retry_of_a_pinned_request_stays_in_its_track_when_it_can() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green-1", 8002, track="candidate", weight=10),
        release_backend("green-2", 8003, track="candidate", weight=0),
    )
    green = route.pinned["candidate"]
    first, second = green.local
    assert choose_target(green, CLOCK.now, exclude=first) is second
    assert choose_target(green, CLOCK.now, exclude=second) is first


def test_retry_of_a_pinned_request_falls_back_to_the_normal_choice() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green", 8002, track="candidate", weight=0),
    )
    green = route.pinned["candidate"]
    (only,) = green.local
    assert choose_target(green, CLOCK.now, exclude=only) is route.local[0]  # blue
    # nothing else in the route: the retry may use the same backend, as unpinned ones do
    alone = release_plan(release_backend("green", 8002, track="candidate", weight=0))
    (green_only,) = alone.pinned["candidate"].local
    assert choose_target(alone.pinned["candidate"], CLOCK.now, exclude=green_only) is green_only
    assert choose_target(alone, CLOCK.now) is None  # unpinned: weight 0 gets nothing


def test_marking_a_plan_stale_marks_its_pinned_plans() -> None:
    route = release_plan(
        release_backend("blue", 8001),
        release_backend("green", 8002, track="candidate", weight=0),
    )
    route.mark_stale()
    assert route.stale and route.pinned["candidate"].stale and route.pinned["stable"].stale


def test_retry_avoids_every_backend_that_failed_for_the_request() -> None:
    a, b, c = target("a"), target("b"), target("c", site="surabaya")
    route = plan(a, b, c)
    assert {choose_target(route, CLOCK.now, exclude=b, tried=(a,)) for _ in range(20)} == {c}
    # an ejected backend not tried yet beats one that failed already
    c.upstream.ejected_until = CLOCK.now + 5
    assert {choose_target(route, CLOCK.now, exclude=b, tried=(a,)) for _ in range(20)} == {c}
    # all tried: anything but the one that just failed
    everything = {choose_target(route, CLOCK.now, exclude=b, tried=(a, c)) for _ in range(50)}
    assert everything == {a}  # own site first


def test_reach_counts_the_backends_a_request_can_be_sent_to() -> None:
    route = release_plan(
        release_backend("blue-1", 8001),
        release_backend("blue-2", 8002),
        release_backend("drained", 8003, weight=0),
        release_backend("green", 8004, track="candidate", weight=0),
        release_backend("canary", 8005, track="candidate", weight=5),
    )
    assert route.reach == 3  # blue-1, blue-2, canary
    assert route.pinned["candidate"].reach == 4  # green, canary, then blue-1 and blue-2
    assert route.pinned["stable"].reach == 4  # blue-1, blue-2, drained, then canary
