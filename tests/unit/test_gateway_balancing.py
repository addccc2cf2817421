"""Backend selection: locality, weights, load, ejection, retries avoiding the failed one."""

from __future__ import annotations

import random
from collections import Counter

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
