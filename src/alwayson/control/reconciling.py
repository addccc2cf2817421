"""One reconcile cycle as a pure function: snapshot in, actions and a verdict out.

Converging follows one rule: stop what is redundant first, then start what is missing. A
changed instance (new version, command, env) is replaced one at a time per service and
site (etcd's members one at a time in all), and only while the rest of that group is
ready, so capacity never drops to zero and etcd never loses its majority.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from alwayson.runtime.base import InstanceSpec, Kind, Phase

SHOWN = 3


@dataclass(frozen=True)
class Observed:
    id: str
    site: str
    service: str
    template: str
    phase: Phase


@dataclass(frozen=True)
class Snapshot:
    now: float
    desired: Mapping[str, InstanceSpec]
    observed: Mapping[str, Observed]
    stopping: frozenset[str] = frozenset()
    blocked_until: Mapping[str, float] = field(default_factory=dict)
    crash_reasons: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    id: str
    reason: str


@dataclass(frozen=True)
class Start:
    spec: InstanceSpec
    reason: str


@dataclass(frozen=True)
class Decision:
    stops: list[Stop]
    starts: list[Start]
    waiting: list[str]
    verdict: str

    @property
    def acted(self) -> bool:
        return bool(self.stops or self.starts)


def decide(snap: Snapshot) -> Decision:
    stops: list[Stop] = []
    for ident in sorted(snap.observed):
        if ident not in snap.desired and ident not in snap.stopping:
            stops.append(Stop(ident, "no longer in the spec"))
    stops.extend(_replacements(snap, {s.id for s in stops}))

    starts: list[Start] = []
    waiting: list[str] = []
    for ident in sorted(snap.desired):
        if ident in snap.observed or ident in snap.stopping:
            continue
        due = snap.blocked_until.get(ident, 0.0)
        if due > snap.now:
            reason = snap.crash_reasons.get(ident, "crashed")
            waiting.append(f"{ident} waits to restart ({reason})")
            continue
        why = f"after {snap.crash_reasons[ident]}" if ident in snap.crash_reasons else "missing"
        starts.append(Start(snap.desired[ident], why))
    return Decision(stops, starts, waiting, _verdict(snap, stops, starts, waiting))


def _group(snap: Snapshot, ident: str, service: str, site: str) -> tuple[str, str]:
    """Instances replaced one at a time: a service's in one site; etcd's members across
    every site, so a majority of them stays up while each is replaced."""
    spec = snap.desired.get(ident)
    if spec is not None and spec.kind is Kind.ETCD:
        return (service, "")
    return (service, site)


def _replacements(snap: Snapshot, stopping_now: set[str]) -> list[Stop]:
    groups: dict[tuple[str, str], list[Observed]] = {}
    for obs in snap.observed.values():
        groups.setdefault(_group(snap, obs.id, obs.service, obs.site), []).append(obs)
    out: list[Stop] = []
    for key, members in groups.items():
        changed = sorted(
            (
                m
                for m in members
                if m.id in snap.desired
                and m.id not in snap.stopping
                and snap.desired[m.id].template_hash() != m.template
            ),
            key=lambda m: m.id,
        )
        if not changed:
            continue
        busy = any(m.id in snap.stopping or m.id in stopping_now for m in members)
        missing = any(
            ident not in snap.observed
            for ident, spec in snap.desired.items()
            if _group(snap, ident, spec.service, spec.site) == key
        )
        others_ready = all(m.phase is Phase.READY for m in members if m.id != changed[0].id)
        if busy or missing or not others_ready:
            continue
        out.append(Stop(changed[0].id, "replaced: its spec changed"))
    return out


def _names(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" +{len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def _verdict(snap: Snapshot, stops: list[Stop], starts: list[Start], waiting: list[str]) -> str:
    parts: list[str] = []
    for reason in sorted({s.reason for s in stops}):
        ids = [s.id for s in stops if s.reason == reason]
        parts.append(f"stopped {len(ids)} ({reason}): {_names(ids)}")
    fresh = [s.spec.id for s in starts if s.reason == "missing"]
    restarted = [s for s in starts if s.reason != "missing"]
    if fresh:
        parts.append(f"started {len(fresh)}: {_names(fresh)}")
    for start in restarted:
        parts.append(f"restarted {start.spec.id} ({start.reason})")
    if waiting:
        parts.append("waiting: " + "; ".join(waiting[:SHOWN]))
    if not parts:
        ready = sum(1 for o in snap.observed.values() if o.phase is Phase.READY)
        total = len(snap.desired)
        if ready == total:
            return f"steady: {ready}/{total} processes ready"
        return f"converging: {ready}/{total} processes ready, nothing to start or stop"
    return "; ".join(parts)
