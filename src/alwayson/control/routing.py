"""Routing tables for the gateways and front doors, built from what is ready (pure)."""

from __future__ import annotations

from typing import Any

from alwayson.runtime.base import InstanceStatus, Kind
from alwayson.spec.models import PlatformSpec

Table = dict[str, Any]


def site_table(spec: PlatformSpec, site: str, statuses: list[InstanceStatus]) -> Table:
    """Every service's ready instances in every site; the gateway prefers its own site."""
    by_service: dict[str, list[InstanceStatus]] = {}
    for status in statuses:
        if status.spec.kind is Kind.WORKLOAD and status.ready:
            by_service.setdefault(status.spec.service, []).append(status)
    routes: list[dict[str, Any]] = []
    for svc in spec.services:
        backends = [
            {
                "id": s.spec.id,
                "address": s.address,
                "site": s.spec.site,
                "version": s.spec.version,
                "weight": 100,
            }
            for s in sorted(by_service.get(svc.name, []), key=lambda s: s.spec.id)
        ]
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
