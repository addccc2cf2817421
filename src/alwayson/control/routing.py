"""Routing tables for the gateways and front doors, built from what is ready (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alwayson.release.model import Routing
from alwayson.runtime.base import InstanceStatus, Kind
from alwayson.spec.models import PlatformSpec

Table = dict[str, Any]


@dataclass(frozen=True)
class Split:
    """A service's traffic split during a release: which version label is the candidate."""

    candidate: str
    routing: Routing
    weight: int = 0  # the candidate's percent, for Routing.WEIGHTED


def backend_weights(
    split: Split | None, stable_ready: int, candidate_ready: int
) -> tuple[int, int]:
    """(stable, candidate) weight of each instance in one site.

    With ``WEIGHTED``, each site's candidates together get ``weight`` % of what that site's
    gateway sends (the gateway prefers its own site), whatever the instance counts.
    """
    if split is None or split.routing is Routing.INSTANCES:
        return 100, 100
    if split.routing in (Routing.PREVIEW, Routing.STABLE):
        return 100, 0
    if split.routing is Routing.CANDIDATE:
        return 0, 100
    if not stable_ready or not candidate_ready:
        return 100, 100  # only one version is ready here: it takes the site's traffic
    return (100 - split.weight) * candidate_ready, split.weight * stable_ready


def site_table(
    spec: PlatformSpec,
    site: str,
    statuses: list[InstanceStatus],
    splits: Mapping[str, Split] | None = None,
) -> Table:
    """Every service's ready instances in every site; the gateway prefers its own site."""
    by_service: dict[str, list[InstanceStatus]] = {}
    for status in statuses:
        if status.spec.kind is Kind.WORKLOAD and status.ready:
            by_service.setdefault(status.spec.service, []).append(status)
    routes: list[dict[str, Any]] = []
    for svc in spec.services:
        ready = sorted(by_service.get(svc.name, []), key=lambda s: s.spec.id)
        split = (splits or {}).get(svc.name)
        weights: dict[str, tuple[int, int]] = {}
        for name in {s.spec.site for s in ready}:
            here = [s for s in ready if s.spec.site == name]
            fresh = sum(1 for s in here if split is not None and s.spec.version == split.candidate)
            weights[name] = backend_weights(split, len(here) - fresh, fresh)
        backends = []
        for s in ready:
            candidate = split is not None and s.spec.version == split.candidate
            backend: dict[str, Any] = {
                "id": s.spec.id,
                "address": s.address,
                "site": s.spec.site,
                "version": s.spec.version,
                "weight": weights[s.spec.site][1 if candidate else 0],
            }
            if candidate:
                backend["track"] = "candidate"
            backends.append(backend)
        for route in svc.routes:
            routes.append(
                {
                    "service": svc.name,
                    "hosts": [route.host] if route.host else [],
                    "path_prefix": route.path,
                    "backends": backends,
                    "max_body_bytes": svc.max_body,
                }
            )
    return {"generation": 0, "site": site, "routes": routes}


def frontdoor_table(spec: PlatformSpec, site: str, statuses: list[InstanceStatus]) -> Table:
    """One catch-all route to the ready site gateways."""
    gateways = sorted(
        (s for s in statuses if s.spec.kind is Kind.GATEWAY and s.ready), key=lambda s: s.spec.id
    )
    backends = [
        {
            "id": s.spec.id,
            "address": f"{spec.gateway_address(s.spec.site)}:{spec.gateway.port}",
            "site": s.spec.site,
            "version": "builtin",
            "weight": 100,
        }
        for s in gateways
    ]
    route = {"service": "frontdoor", "hosts": [], "path_prefix": None, "backends": backends}
    return {"generation": 0, "site": site, "routes": [route]}


def same_table(a: Table | None, b: Table | None) -> bool:
    if a is None or b is None:
        return a is b
    return {k: v for k, v in a.items() if k != "generation"} == {
        k: v for k, v in b.items() if k != "generation"
    }
