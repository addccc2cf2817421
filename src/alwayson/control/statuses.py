"""What ``alwayson status`` and the dashboard show, as a pure function of one snapshot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from alwayson.control.backoff import CrashRecord
from alwayson.control.state import PlatformState


def status_view(
    state: PlatformState,
    *,
    verdict: str,
    cycles: int,
    crashes: Mapping[str, CrashRecord],
    start_failures: Mapping[str, str],
    log_path: Callable[[str, str], str],
) -> dict[str, Any]:
    spec = state.spec
    loaded = state.loaded
    desired = state.desired
    statuses = {s.spec.id: s for s in state.statuses}
    instances = []
    for ident in sorted(set(desired) | set(statuses)):
        status = statuses.get(ident)
        inst = desired.get(ident) or (status.spec if status else None)
        if inst is None:
            continue
        crash = crashes.get(ident)
        instances.append(
            {
                "id": ident,
                "kind": inst.kind.value,
                "site": inst.site,
                "service": inst.service,
                "version": inst.version,
                "address": f"{inst.host}:{inst.port}",
                "desired": ident in desired,
                "pid": status.pid if status else None,
                "phase": status.phase.value if status else "pending",
                "ready": bool(status and status.ready),
                "adopted": bool(status and status.adopted),
                "started_at": status.started_at if status else None,
                "restarts": crash.total_restarts if crash else 0,
                "failures": crash.failures if crash else 0,
                "last_exit": crash.last_reason if crash else "",
                "last_probe": status.last_probe if status else "",
                "start_failure": start_failures.get(ident, ""),
                "log": log_path(inst.site, ident),
            }
        )
    sites = []
    for site in spec.sites if spec else []:
        rows = [i for i in instances if i["site"] == site.name and i["desired"]]
        sites.append(
            {
                "name": site.name,
                "witness": site.witness,
                "subnet": spec.subnet_of(site.name) if spec else "",
                "desired": len(rows),
                "ready": sum(1 for r in rows if r["ready"]),
            }
        )
    services = []
    for svc in spec.services if spec else []:
        rows = [i for i in instances if i["service"] == svc.name and i["desired"]]
        running = state.running_release(svc.name)
        services.append(
            {
                "name": svc.name,
                "version": state.effective(svc.name)[0],
                "release": running.summary() if running else None,
                "port": svc.port,
                "desired": len(rows),
                "ready": sum(1 for r in rows if r["ready"]),
                "routes": [r.model_dump(exclude_none=True) for r in svc.routes],
            }
        )
    ready = sum(1 for i in instances if i["desired"] and i["ready"])
    return {
        "platform": spec.platform if spec else None,
        "spec": str(loaded.path) if loaded else None,
        "digest": loaded.digest if loaded else None,
        "front_door": f"http://{spec.front_door.listen}" if spec else None,
        "verdict": verdict,
        "cycles": cycles,
        "desired": len(desired),
        "ready": ready,
        "converged": bool(desired) and ready == len(desired),
        "drift": [
            {"service": s, "site": site, "replicas": n}
            for (s, site), n in sorted(state.overrides.items())
        ],
        "sites": sites,
        "services": services,
        "instances": instances,
    }
