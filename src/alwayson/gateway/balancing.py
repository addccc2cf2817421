"""Choosing the backend of a request: site locality first, then weights and load.

- Backends in the gateway's own site are preferred; other sites are used only when no
  backend of its own site is usable (weight above zero and not ejected).
- Backends in a site cut off from the gateway's own (``cut_off``: a site partition, from
  :mod:`alwayson.util.sitelinks`) are left out of the plans altogether, so neither a first
  attempt nor a retry goes there; the gateway compiles its plans again when the cut
  changes, which costs the requests nothing.
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
- A retry avoids the backend that just failed, and those that failed earlier for the
  same request, whenever another one exists.
- A plan is marked ``stale`` when a newer table is installed; requests read under the old
  table (pipelined, or retried) are matched again, so no request goes to a backend the
  new table removed.

Pinning a request to one side of a release (canary, blue-green), by request header; names
and values are case-insensitive and the headers are forwarded to the backend unchanged:

- ``X-Alwayson-Track: candidate`` (or ``stable``) sends the request only to the route's
  backends of that :attr:`~alwayson.gateway.routes.Backend.track`, *including* those at
  weight 0 (a blue-green preview runs at weight 0 before the switch). Within that set the
  rules above apply as usual, weight 0 counting as weight 1.
- ``X-Alwayson-Preview: 1`` is ``X-Alwayson-Track: candidate``; any other value pins
  nothing. When both headers are sent, ``X-Alwayson-Track`` wins.
- A route with no backend of the pinned track routes the request as if it were unpinned.
- A retry of a pinned request stays in its track when the track has another backend;
  otherwise it is chosen as an unpinned request's retry would be.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import get_args

from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.matching import RouteMatcher
from alwayson.gateway.metrics import GatewayMetrics, RequestStats
from alwayson.gateway.routes import Route, RouteTable, Track, normalized_prefix
from alwayson.gateway.upstreams import Upstream


class Target:
    """A backend as one route sees it: its weight there, and the shared upstream."""

    __slots__ = ("id", "service", "site", "stats", "track", "upstream", "version", "weight")

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
        track: Track = "stable",
    ) -> None:
        self.id = id
        self.service = service
        self.site = site
        self.version = version
        self.weight = weight
        self.upstream = upstream
        self.stats = stats
        self.track = track

    def __repr__(self) -> str:
        return f"Target({self.id!r}, {self.upstream.address}, site={self.site!r})"


class RoutePlan:
    """A compiled route: its targets split by locality, weight-zero ones left out.

    ``pinned`` holds, per track that has backends, the plan of the requests pinned to it
    (see the module docstring); such a plan's ``unpinned`` is the route's own plan.
    """

    __slots__ = (
        "local",
        "max_body",
        "pinned",
        "reach",
        "remote",
        "service",
        "stale",
        "unavailable_stats",
        "unpinned",
    )

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
        self.pinned: dict[str, RoutePlan] = {}
        self.unpinned: RoutePlan | None = None
        # How many backends the attempts of one request can go to (retries included).
        self.reach = len(self.local) + len(self.remote)

    def mark_stale(self) -> None:
        """A newer table replaced this plan (and the plans of its pinned requests)."""
        self.stale = True
        for plan in self.pinned.values():
            plan.stale = True


def choose_target(
    plan: RoutePlan,
    now: float,
    exclude: Target | None = None,
    policy: OutlierPolicy | None = None,
    tried: Sequence[Target] = (),
    rand: Callable[[], float] = random.random,
) -> Target | None:
    """The target for the next attempt of a request, or None when the route has none.

    ``exclude`` is the target whose attempt just failed (None for a first attempt) and
    ``tried`` those that failed earlier for the same request: a retry avoids all of them
    while the route has another target.
    """
    if exclude is not None:
        return _choose_retry(plan, now, exclude, policy, tried, rand)
    local = plan.local
    if len(local) == 1:
        only = local[0]
        if only.upstream.ejected_until <= now:
            return only
    for tier in (local, plan.remote):
        usable = [target for target in tier if target.upstream.ejected_until <= now]
        if usable:
            return pick(usable, rand, now, policy)
    # Everything is ejected: a guess beats a certain 503, own site first.
    for tier in (local, plan.remote):
        if tier:
            return pick(tier, rand, now, None)
    return None


def _choose_retry(
    plan: RoutePlan,
    now: float,
    exclude: Target,
    policy: OutlierPolicy | None,
    tried: Sequence[Target],
    rand: Callable[[], float],
) -> Target | None:
    avoid = (exclude, *tried)
    if plan.unpinned is not None and all(t in avoid for t in plan.local + plan.remote):
        # The retry of a pinned request whose track has no other backend.
        return _choose_retry(plan.unpinned, now, exclude, policy, tried, rand) or exclude
    local, remote = plan.local, plan.remote
    for tier in (local, remote):
        usable = [t for t in tier if t not in avoid and t.upstream.ejected_until <= now]
        if usable:
            return pick(usable, rand, now, policy)
    # Everything else is ejected or failed already: try the ejected ones, then those that
    # failed earlier, then the one that just failed.
    for tier in (local, remote):
        others = [t for t in tier if t not in avoid]
        if others:
            return pick(others, rand, now, None)
    for tier in (local, remote):
        others = [t for t in tier if t is not exclude]
        if others:
            return pick(others, rand, now, None)
    if exclude in local or exclude in remote:
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
    cut_off: Collection[str] = frozenset(),
) -> tuple[RouteMatcher[RoutePlan], list[RoutePlan]]:
    """The lookup structure of a table and its plans; ``upstream_for`` returns the pool of
    an address (existing pools are reused, so their idle connections and ejections carry
    over). Backends in the sites of ``cut_off`` are left out (and get no pool)."""
    entries = []
    plans = []
    for route in table.routes:
        plan = compile_route(route, site, upstream_for, metrics, default_max_body, cut_off)
        entries.append((route.hosts, normalized_prefix(route.path_prefix), plan))
        plans.append(plan)
    return RouteMatcher(entries), plans


def compile_route(
    route: Route,
    site: str,
    upstream_for: Callable[[str, int], Upstream],
    metrics: GatewayMetrics,
    default_max_body: int = 10 * 1024 * 1024,
    cut_off: Collection[str] = frozenset(),
) -> RoutePlan:
    local: list[Target] = []
    remote: list[Target] = []
    for backend in route.backends:
        if backend.site in cut_off:
            continue
        host, port = backend.host_port()
        target = Target(
            id=backend.id,
            service=route.service,
            site=backend.site,
            version=backend.version,
            weight=backend.weight,
            upstream=upstream_for(host, port),
            stats=metrics.stats_for(route.service, backend.version, backend.site),
            track=backend.track,
        )
        (local if backend.site == site else remote).append(target)
    max_body = route.max_body_bytes if route.max_body_bytes is not None else default_max_body
    unavailable = metrics.stats_for(route.service, "", "")
    plan = RoutePlan(route.service, local, remote, unavailable, max_body)
    for track in get_args(Track):
        pinned_local = [_pinnable(target) for target in local if target.track == track]
        pinned_remote = [_pinnable(target) for target in remote if target.track == track]
        if pinned_local or pinned_remote:
            pinned = RoutePlan(route.service, pinned_local, pinned_remote, unavailable, max_body)
            pinned.unpinned = plan
            pinned.reach = len({*pinned.local, *pinned.remote, *plan.local, *plan.remote})
            plan.pinned[track] = pinned
    return plan


def _pinnable(target: Target) -> Target:
    """The target as pinned requests see it: weight 0 counts as 1. A target with a weight
    is the same object in both plans, so a retry's ``exclude`` holds across them."""
    if target.weight > 0:
        return target
    return Target(
        id=target.id,
        service=target.service,
        site=target.site,
        version=target.version,
        weight=1,
        upstream=target.upstream,
        stats=target.stats,
        track=target.track,
    )
