"""One frozen view of the platform per loop turn, and the one place replicas are counted.

``PlatformState`` is built once per reconcile turn (and once per API view) from what the
controller holds: the applied spec, drift, the autoscaler's counts, release splits and
versions, sites a drill holds down, what runs, the tables gateways were given and what is
being stopped.
Every decision of that turn reads this one value, so no two parts see two worlds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from alwayson.control.routing import Split, Table
from alwayson.release.model import Release
from alwayson.runtime.base import InstanceSpec, InstanceStatus, Kind, Phase
from alwayson.spec.loading import LoadedSpec
from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import Overrides, effective_replicas
from alwayson.util.errors import NotFoundError


def replica_counts(spec: PlatformSpec, overrides: Overrides, autoscaled: Overrides) -> Overrides:
    """How many instances of each service run per site, where that is not the spec's count.

    The one resolution every path uses (what runs, a deploy, a release started by apply, a
    release's later stages): the autoscaler's count for a service that still autoscales,
    clamped to its min..max, then ``alwayson scale`` drift on top (it wins until apply).
    """
    counts: dict[tuple[str, str], int] = {}
    names = {s.name for s in spec.services}
    for (service, site), n in autoscaled.items():
        if service not in names:
            continue
        scale = spec.service(service).autoscale
        if scale is not None:
            counts[(service, site)] = max(scale.min, min(scale.max, n))
    counts.update(overrides)
    return counts


def site_replicas(spec: PlatformSpec, counts: Overrides, service: str) -> dict[str, int]:
    """``service``'s instance count in each workload site, from ``replica_counts``."""
    return {s.name: effective_replicas(spec, counts, service, s.name) for s in spec.workload_sites}


def only_site(sites: list[str], site: str | None) -> list[str]:
    """``sites``, or just ``site`` when one is named (which must be among them)."""
    if site is None:
        return sites
    if site not in sites:
        raise NotFoundError(f"unknown workload site {site!r} (sites: {', '.join(sites)})")
    return [site]


@dataclass(frozen=True)
class PlatformState:
    """Everything one loop turn decides from; never mutated after it is built."""

    now: float
    loaded: LoadedSpec | None
    overrides: Mapping[tuple[str, str], int] = field(default_factory=dict)
    autoscaled: Mapping[tuple[str, str], int] = field(default_factory=dict)
    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    splits: Mapping[str, Split] = field(default_factory=dict)
    versions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    releases: Mapping[str, Release] = field(default_factory=dict)
    sites_down: frozenset[str] = frozenset()
    desired: Mapping[str, InstanceSpec] = field(default_factory=dict)
    statuses: tuple[InstanceStatus, ...] = ()
    pushed: Mapping[str, Table] = field(default_factory=dict)
    stopping: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()

    @property
    def spec(self) -> PlatformSpec | None:
        return self.loaded.spec if self.loaded else None

    def status_of(self, instance_id: str) -> InstanceStatus | None:
        return next((s for s in self.statuses if s.spec.id == instance_id), None)

    def running(self) -> list[InstanceStatus]:
        """What runs (everything not exited)."""
        return [s for s in self.statuses if s.phase is not Phase.EXITED]

    def replicas(self, service: str, site: str) -> int:
        """How many instances of ``service`` should run in ``site`` now."""
        spec = self.spec
        if spec is None:
            return 0
        return effective_replicas(spec, dict(self.counts), service, site)

    def desired_count(self, service: str, site: str) -> int:
        """Instances of ``service`` desired in ``site`` now (all versions of a release)."""
        return sum(
            1
            for inst in self.desired.values()
            if inst.kind is Kind.WORKLOAD and inst.service == service and inst.site == site
        )

    def effective(self, service: str) -> tuple[str, str]:
        """(version, run) that ``service`` runs outside a release."""
        spec = self.spec
        if service in self.versions or spec is None:
            return self.versions.get(service, ("", ""))
        svc = spec.service(service)
        return svc.version, svc.run

    def running_release(self, service: str) -> Release | None:
        release = self.releases.get(service)
        return release if release is not None and release.phase.active else None


def frozen_statuses(statuses: list[InstanceStatus]) -> tuple[InstanceStatus, ...]:
    """Copies of the runtime's statuses as of now (the runtime keeps updating its own)."""
    return tuple(dataclasses.replace(s) for s in statuses)
