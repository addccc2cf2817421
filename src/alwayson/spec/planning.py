"""``plan``: the difference between a spec and what the platform runs now.

What runs is described by the spec the controller applied last plus the drift recorded
since (``alwayson scale``). The plan lists what ``apply`` of the new spec would change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from alwayson.spec.models import PlatformSpec, Service
from alwayson.spec.secrets import SECRET_LOOKING


class ChangeKind(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    CHANGE = "change"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    target: str
    detail: str
    destroys: str | None = None
    """Set on a change that can lose data or stop serving it: why, and the safe way."""

    def __str__(self) -> str:
        sign = {ChangeKind.ADD: "+", ChangeKind.REMOVE: "-", ChangeKind.CHANGE: "~"}[self.kind]
        guard = f" [DESTRUCTIVE: {self.destroys}]" if self.destroys else ""
        return f"{sign} {self.target}: {self.detail}{guard}"


def destructive(changes: list[Change]) -> list[Change]:
    """The changes ``apply`` makes only when told ``--allow-destroy``."""
    return [c for c in changes if c.destroys]


def refusal(changes: list[Change]) -> str:
    """Why ``apply`` refused: every destructive change, and how to go on."""
    listed = "; ".join(str(c) for c in changes)
    return (
        f"refused: {len(changes)} destructive change(s): {listed}. Nothing was changed. "
        "Apply again with --allow-destroy to do it anyway"
    )


Overrides = dict[tuple[str, str], int]
"""Replica counts set by ``alwayson scale``: (service, site) → replicas."""


def effective_replicas(spec: PlatformSpec, overrides: Overrides, service: str, site: str) -> int:
    if (service, site) in overrides:
        return overrides[(service, site)]
    return spec.service(service).replicas_in(site)


Versions = dict[str, tuple[str, str]]
"""(version, run) of services released by ``alwayson deploy``: service → what runs."""


def plan(
    new: PlatformSpec,
    current: PlatformSpec | None,
    overrides: Overrides,
    versions: Versions | None = None,
) -> list[Change]:
    """Changes that applying ``new`` makes to ``current`` (with its drift)."""
    if current is None or new.platform != current.platform:
        return [
            Change(ChangeKind.ADD, f"service {svc.name}", _describe(new, svc))
            for svc in new.services
        ]
    changes: list[Change] = []
    old_sites = {s.name for s in current.sites}
    new_sites = {s.name for s in new.sites}
    for site in sorted(new_sites - old_sites):
        changes.append(Change(ChangeKind.ADD, f"site {site}", "new site"))
    for site in sorted(old_sites - new_sites):
        changes.append(Change(ChangeKind.REMOVE, f"site {site}", "its instances stop"))
    for site in sorted(old_sites & new_sites):
        before = (current.subnet_of(site), next(s.witness for s in current.sites if s.name == site))
        after = (new.subnet_of(site), next(s.witness for s in new.sites if s.name == site))
        if before != after and not (before[1] and after[1]):
            changes.append(
                Change(
                    ChangeKind.CHANGE,
                    f"site {site}",
                    f"subnet/witness {before[0]}/{before[1]} → {after[0]}/{after[1]} "
                    "(its instances are replaced)",
                )
            )
    old_services = {s.name: s for s in current.services}
    for svc in new.services:
        old = old_services.pop(svc.name, None)
        if old is None:
            changes.append(Change(ChangeKind.ADD, f"service {svc.name}", _describe(new, svc)))
            continue
        deployed = (versions or {}).get(svc.name)
        changes.extend(_service_changes(new, current, overrides, old, svc, deployed))
    for name in sorted(old_services):
        changes.append(Change(ChangeKind.REMOVE, f"service {name}", "every instance stops"))
    changes.extend(_database_changes(new, current))
    for field in ("front_door", "gateway", "controller", "runtime"):
        if getattr(new, field) != getattr(current, field):
            changes.append(
                Change(
                    ChangeKind.CHANGE,
                    field,
                    f"{getattr(current, field).model_dump(mode='json')} → "
                    f"{getattr(new, field).model_dump(mode='json')}",
                )
            )
    for field in ("metrics", "alerts", "notifications", "drills"):
        if getattr(new, field) != getattr(current, field):
            changes.append(Change(ChangeKind.CHANGE, field, "changed (see the file's diff)"))
    return changes


IDENTITY = {
    "primary_site": (
        "the running primary does not move: `alwayson db switchover NAME --to SITE` moves "
        "it without losing a write; primary_site only says where a new database starts"
    ),
    "replication": (
        "asynchronous replication can lose committed writes in a failover (RPO > 0); "
        "synchronous can stop writes while the standby is away"
    ),
}
"""A database's fields whose change is destructive, and why."""


def _database_changes(new: PlatformSpec, current: PlatformSpec) -> list[Change]:
    out: list[Change] = []
    before = {d.name: d for d in current.databases}
    for db in new.databases:
        old = before.pop(db.name, None)
        target = f"database {db.name}"
        if old is None:
            detail = f"primary in {db.primary_site}, {db.replication}, for {db.services}"
            out.append(Change(ChangeKind.ADD, target, detail))
            continue
        for field in type(db).model_fields:
            was, now = getattr(old, field), getattr(db, field)
            if was == now:
                continue
            if field == "services":
                out.extend(_database_users(db.name, was, now))
                continue
            out.append(
                Change(
                    ChangeKind.CHANGE,
                    target,
                    f"{field} {_show(was)} → {_show(now)}",
                    destroys=IDENTITY.get(field),
                )
            )
    for name, old in sorted(before.items()):
        out.append(
            Change(
                ChangeKind.REMOVE,
                f"database {name}",
                f"both PostgreSQL servers stop; {', '.join(old.services) or 'no service'} "
                "lose DATABASE_URL",
                destroys=(
                    "its data is no longer served and services that used it lose their "
                    "writes; take a backup first (`alwayson backup create`)"
                ),
            )
        )
        out.extend(_database_users(name, old.services, []))
    return out


def _database_users(db: str, was: list[str], now: list[str]) -> list[Change]:
    out = []
    for svc in sorted(set(was) - set(now)):
        detail = f"loses DATABASE_URL (database {db}): its instances are replaced without it"
        out.append(Change(ChangeKind.CHANGE, f"service {svc}", detail))
    for svc in sorted(set(now) - set(was)):
        detail = f"gets DATABASE_URL (database {db}): its instances are replaced with it"
        out.append(Change(ChangeKind.CHANGE, f"service {svc}", detail))
    return out


def _service_changes(
    new: PlatformSpec,
    current: PlatformSpec,
    overrides: Overrides,
    old: Service,
    svc: Service,
    deployed: tuple[str, str] | None = None,
) -> list[Change]:
    out: list[Change] = []
    target = f"service {svc.name}"
    for site in new.workload_sites:
        want = svc.replicas_in(site.name)
        has = (
            effective_replicas(current, overrides, svc.name, site.name)
            if site.name in {s.name for s in current.sites}
            else 0
        )
        if want != has:
            why = " (drift: set by `alwayson scale`)" if (svc.name, site.name) in overrides else ""
            out.append(
                Change(ChangeKind.CHANGE, target, f"replicas in {site.name} {has} → {want}{why}")
            )
    if deployed is not None:
        old = old.model_copy(update={"version": deployed[0], "run": deployed[1]})
    fields = ("version", "run", "port", "env", "health", "liveness", "routes", "stop_grace")
    for field in (*fields, "max_body", "release"):
        before, after = getattr(old, field), getattr(svc, field)
        if before != after:
            why = (
                " (drift: set by `alwayson deploy`)"
                if deployed is not None and field in ("version", "run")
                else ""
            )
            if field in ("version", "run") and svc.replicas:
                why += f"; apply releases it ({svc.release.strategy})"
            if field == "env":
                out.append(Change(ChangeKind.CHANGE, target, f"env {_env_diff(before, after)}"))
                continue
            out.append(
                Change(ChangeKind.CHANGE, target, f"{field} {_show(before)} → {_show(after)}{why}")
            )
    if old.secrets != svc.secrets:
        named = ", ".join(u.name for u in svc.secrets) or "none"
        out.append(Change(ChangeKind.CHANGE, target, f"secrets used: {named}"))
    return out


def _env_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """Each variable added, removed or changed; a value only when its name does not look
    like a secret's (``KEY``, ``TOKEN``, ``PASSWORD``...: ``(secret changed)``)."""

    def shown(name: str, value: str) -> str:
        return "(secret)" if SECRET_LOOKING.search(name) else repr(value)

    parts = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            parts.append(f"-{name}")
        elif name not in before:
            parts.append(f"+{name}={shown(name, after[name])}")
        elif before[name] != after[name]:
            if SECRET_LOOKING.search(name):
                parts.append(f"~{name} (secret changed)")
            else:
                parts.append(f"~{name} {before[name]!r} → {after[name]!r}")
    return ", ".join(parts)


def _show(value: object) -> str:
    if hasattr(value, "model_dump"):
        return str(value.model_dump(mode="json", exclude_defaults=True))
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _describe(spec: PlatformSpec, svc: Service) -> str:
    counts = ", ".join(f"{s.name}={svc.replicas_in(s.name)}" for s in spec.workload_sites)
    return f"version {svc.version}, port {svc.port}, replicas {counts}"
