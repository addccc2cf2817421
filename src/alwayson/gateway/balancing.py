"""Choosing the backend of a request: site locality first, then weights and load.

- Backends in the gateway's own site are preferred; other sites are used only when no
  backend of its own site is usable (weight above zero and not ejected).
- Among the candidates, two are drawn at random in proportion to their ``weight`` and the
  one with fewer outstanding requests *per unit of weight* wins ("power of two choices").
  At rest (nothing outstanding) this is plain weighted choice, so a canary at weight 10
  next to a stable at 90 gets 10 % of the requests; under load, a slow backend collects
  outstanding requests and is chosen less.
- A backend whose connect failed is ejected for a few seconds. When every backend is
  ejected the gateway still tries them (a guess beats a certain 503), own site first.
- A retry avoids the backend that just failed whenever another one exists.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

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

    __slots__ = ("local", "remote", "service", "unavailable_stats")

    def __init__(
        self,
        service: str,
        local: Sequence[Target],
        remote: Sequence[Target],
        unavailable_stats: RequestStats,
    ) -> None:
        self.service = service
        self.local = tuple(target for target in local if target.weight > 0)
        self.remote = tuple(target for target in remote if target.weight > 0)
        self.unavailable_stats = unavailable_stats


def choose_target(
    plan: RoutePlan,
    now: float,
    exclude: Target | None = None,
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
            return pick(usable, rand)
    # Everything is ejected or excluded: try the ejected ones, then the excluded one.
    for tier in (local, plan.remote):
        others = [target for target in tier if target is not exclude]
        if others:
            return pick(others, rand)
    if exclude is not None and (exclude in local or exclude in plan.remote):
        return exclude
    return None


def pick(candidates: Sequence[Target], rand: Callable[[], float]) -> Target:
    """Weighted power of two choices among usable candidates."""
    if len(candidates) == 1:
        return candidates[0]
    total = 0
    for target in candidates:
        total += target.weight
    first = _draw(candidates, total, rand)
    second = _draw(candidates, total, rand)
    if first is second:
        return first
    # Fewer outstanding per unit of weight wins; a tie keeps the first draw (weighted).
    if first.upstream.outstanding * second.weight <= second.upstream.outstanding * first.weight:
        return first
    return second


def _draw(candidates: Sequence[Target], total: int, rand: Callable[[], float]) -> Target:
    point = rand() * total
    for target in candidates:
        point -= target.weight
        if point < 0:
            return target
    return candidates[-1]


def compile_table(
    table: RouteTable,
    site: str,
    upstream_for: Callable[[str, int], Upstream],
    metrics: GatewayMetrics,
) -> RouteMatcher[RoutePlan]:
    """The lookup structure of a table; ``upstream_for`` returns the pool of an address
    (existing pools are reused, so their idle connections and ejections carry over)."""
    entries = []
    for route in table.routes:
        plan = compile_route(route, site, upstream_for, metrics)
        entries.append((route.hosts, normalized_prefix(route.path_prefix), plan))
    return RouteMatcher(entries)


def compile_route(
    route: Route,
    site: str,
    upstream_for: Callable[[str, int], Upstream],
    metrics: GatewayMetrics,
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
    return RoutePlan(route.service, local, remote, metrics.stats_for(route.service, "", ""))
