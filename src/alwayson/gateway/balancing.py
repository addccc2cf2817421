"""Choosing the backend of a request: site locality first, then weights and load.

- Backends in the gateway's own site are preferred; other sites are used only when no
  backend of its own site is usable (weight above zero and not ejected).
- Among the candidates, two are drawn at random in proportion to their ``weight`` and the
  one with fewer outstanding requests *per unit of weight* wins ("power of two choices").
  At rest (nothing outstanding) this is plain weighted choice, so a canary at weight 10
  next to a stable at 90 gets 10 % of the requests; under load, a slow backend collects
  outstanding requests and is chosen less.
- A backend that failed is ejected for a while (:mod:`alwayson.gateway.ejecting`). When
  every backend is ejected the gateway still tries them (a guess beats a certain 503), own
  site first.
- A backend new in the table, or back from an ejection, is slow started: its weight in
  both draws and in the comparison ramps up (:meth:`OutlierPolicy.weight_factor`).
- A retry avoids the backend that just failed whenever another one exists.
- A plan is marked ``stale`` when a newer table is installed; requests read under the old
  table (pipelined, or retried) are matched again, so no request goes to a backend the
  new table removed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.matching import RouteMatcher
from alwayson.gateway.metrics import GatewayMetrics, RequestStats
from alwayson.gateway.routes import Route, RouteTable, normalized_prefix
from alwayson.gateway.upstreams import Upstream


class Target:
    """A backend as one route sees it: its weight there, and the shared upstream."""

    __slots__ = ("id", "service", "site", "stats", "upstream", "version", "weight")

    def __init__(
        self,
        *,
        id: str,
        service: str,
        site: str,
        version: str,
        weight: int,
        upstream: Upstream,
        stats: RequestStats,
    ) -> None:
        self.id = id
        self.service = service
        self.site = site
        self.version = version
        self.weight = weight
        self.upstream = upstream
        self.stats = stats

    def __repr__(self) -> str:
        return f"Target({self.id!r}, {self.upstream.address}, site={self.site!r})"


class RoutePlan:
    """A compiled route: its targets split by locality, weight-zero ones left out."""

    __slots__ = ("local", "max_body", "remote", "service", "stale", "unavailable_stats")

    def __init__(
        self,
        service: str,
        local: Sequence[Target],
        remote: Sequence[Target],
        unavailable_stats: RequestStats,
        max_body: int = 10 * 1024 * 1024,
    ) -> None:
        self.service = service
        self.local = tuple(target for target in local if target.weight > 0)
        self.remote = tuple(target for target in remote if target.weight > 0)
        self.unavailable_stats = unavailable_stats
        self.max_body = max_body
        self.stale = False  # a newer table replaced this plan


def choose_target(
    plan: RoutePlan,
    now: float,
    exclude: Target | None = None,
    policy: OutlierPolicy | None = None,
    rand: Callable[[], float] = random.random,
) -> Target | None:
    """The target for the next attempt of a request, or None when the route has none."""
    local = plan.local
    if exclude is None and len(local) == 1:
        only = local[0]
        if only.upstream.ejected_until <= now:
            return only
    for tier in (local, plan.remote):
        usable = [
            target
            for target in tier
            if target is not exclude and target.upstream.ejected_until <= now
        ]
        if usable:
            return pick(usable, rand, now, policy)
    # Everything is ejected or excluded: try the ejected ones, then the excluded one.
    for tier in (local, plan.remote):
        others = [target for target in tier if target is not exclude]
        if others:
            return pick(others, rand, now, None)
    if exclude is not None and (exclude in local or exclude in plan.remote):
        return exclude
    return None


def pick(
    candidates: Sequence[Target],
    rand: Callable[[], float],
    now: float = 0.0,
    policy: OutlierPolicy | None = None,
) -> Target:
    """Weighted power of two choices among usable candidates."""
    if len(candidates) == 1:
        return candidates[0]
    total = 0.0
    for target in candidates:
        if target.upstream.ramp_until > now and policy is not None:
            return _pick_ramped(candidates, rand, now, policy)
        total += target.weight
    first = _draw(candidates, total, rand)
    second = _draw(candidates, total, rand)
    if first is second:
        return first
    # Fewer outstanding per unit of weight wins; a tie keeps the first draw (weighted).
    if first.upstream.outstanding * second.weight <= second.upstream.outstanding * first.weight:
        return first
    return second


def _draw(candidates: Sequence[Target], total: float, rand: Callable[[], float]) -> Target:
    point = rand() * total
    for target in candidates:
        point -= target.weight
        if point < 0:
            return target
    return candidates[-1]


def _pick_ramped(
    candidates: Sequence[Target], rand: Callable[[], float], now: float, policy: OutlierPolicy
) -> Target:
    """:func:`pick` with slow-start weights (the rare path: some backend is ramping)."""
    weights = [target.weight * policy.weight_factor(target.upstream, now) for target in candidates]
    total = sum(weights)
    first = _draw_index(weights, total, rand)
    second = _draw_index(weights, total, rand)
    if first != second:
        load_first = candidates[first].upstream.outstanding
        load_second = candidates[second].upstream.outstanding
        if load_second * weights[first] < load_first * weights[second]:
            first = second
    return candidates[first]


def _draw_index(weights: list[float], total: float, rand: Callable[[], float]) -> int:
    point = rand() * total
    for index, weight in enumerate(weights):
        point -= weight
        if point < 0:
            return index
    return len(weights) - 1


def compile_table(
    table: RouteTable,
    site: str,
    upstream_for: Callable[[str, int], Upstream],
    metrics: GatewayMetrics,
    default_max_body: int = 10 * 1024 * 1024,
) -> tuple[RouteMatcher[RoutePlan], list[RoutePlan]]:
    """The lookup structure of a table and its plans; ``upstream_for`` returns the pool of
    an address (existing pools are reused, so their idle connections and ejections carry
    over)."""
    entries = []
    plans = []
    for route in table.routes:
        plan = compile_route(route, site, upstream_for, metrics, default_max_body)
        entries.append((route.hosts, normalized_prefix(route.path_prefix), plan))
        plans.append(plan)
    return RouteMatcher(entries), plans


def compile_route(
    route: Route,
    site: str,
    upstream_for: Callable[[str, int], Upstream],
    metrics: GatewayMetrics,
    default_max_body: int = 10 * 1024 * 1024,
) -> RoutePlan:
    local: list[Target] = []
    remote: list[Target] = []
    for backend in route.backends:
        host, port = backend.host_port()
        target = Target(
            id=backend.id,
            service=route.service,
            site=backend.site,
            version=backend.version,
            weight=backend.weight,
            upstream=upstream_for(host, port),
            stats=metrics.stats_for(route.service, backend.version, backend.site),
        )
        (local if backend.site == site else remote).append(target)
    max_body = route.max_body_bytes if route.max_body_bytes is not None else default_max_body
    return RoutePlan(
        route.service, local, remote, metrics.stats_for(route.service, "", ""), max_body
    )
