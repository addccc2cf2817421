"""Samples only the controller knows, added to each scrape: database figures from the
site agents' reports (role, liveness, replication lag, backups)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alwayson.metrics.model import Sample
from alwayson.spec.models import Database, PlatformSpec
from alwayson.util.replication import slot_name

if TYPE_CHECKING:
    from alwayson.control.ports import DatabaseReports


async def database_samples(
    spec: PlatformSpec, databases: DatabaseReports, first_seen: dict[str, float], now: float
) -> list[Sample]:
    """Figures of each database from its agents' reports and its backups.

    ``first_seen`` (kept by the caller) is when each database was first seen: until a
    first verified backup, its age counts from then. It also keeps, per synchronous
    database, since when no primary has named a synchronous standby: RPOZeroLost
    (``alwayson_db_rpo_alert``) fires once that lasts ``standby_timeout``, whatever the
    agents' own state (a new primary after a failover has no standby to lose, and an
    old primary that stays fenced never reports one)."""
    if not spec.databases:
        return []
    out: list[Sample] = []
    settings = {d.name: d for d in spec.databases}
    for db in await databases.status():
        name = db["name"]
        unprotected = _without_sync_standby(settings.get(name), db["sites"], first_seen, now)
        for report in db["sites"]:
            site = str(report.get("site"))
            labels = {"db": name, "site": site}
            alive = not report.get("stale") and report.get("pid") is not None
            out.append(Sample("alwayson_db_up", labels, 1.0 if alive else 0.0))
            primary = report.get("role") == "primary" and bool(report.get("writable"))
            out.append(Sample("alwayson_db_primary", labels, 1.0 if primary else 0.0))
            alert = bool(report.get("alert")) or (primary and unprotected)
            out.append(Sample("alwayson_db_rpo_alert", labels, 1.0 if alert else 0.0))
            for key in ("connections", "xact_total"):
                if isinstance(report.get(key), int | float):
                    out.append(Sample(f"alwayson_db_{key}", labels, float(report[key])))
            for row in report.get("replication") or []:
                standby = _site_of_slot(str(row.get("standby", "")), spec)
                if standby is None:
                    continue
                lag = {"db": name, "site": standby}
                out.append(
                    Sample("alwayson_db_replication_lag_bytes", lag, float(row["lag_bytes"]))
                )
                out.append(
                    Sample("alwayson_db_replication_lag_seconds", lag, float(row["lag_seconds"]))
                )
        backups = await databases.backups(name)
        labels = {"db": name}
        finished = [float(b["finished_at"]) for b in backups if b.get("finished_at")]
        verified = [
            float(b["finished_at"]) for b in backups if b.get("verified") and b.get("finished_at")
        ]
        if finished:
            out.append(Sample("alwayson_db_last_backup_timestamp_seconds", labels, max(finished)))
        # Until a first verified backup, count from when this controller first saw the
        # database, so BackupTooOld fires backup_max_age after that, not at once.
        seen = first_seen.setdefault(name, now)
        out.append(
            Sample(
                "alwayson_db_last_verified_backup_timestamp_seconds",
                labels,
                max(verified) if verified else seen,
            )
        )
        failing = sum(1 for b in backups[-3:] if b.get("verified") is False)
        out.append(Sample("alwayson_db_backup_verify_failures", labels, float(failing)))
    return out


def _without_sync_standby(
    db: Database | None, reports: list[dict[str, Any]], since: dict[str, float], now: float
) -> bool:
    """A synchronous database whose writable primary has named no synchronous standby
    for ``standby_timeout`` or more (``since`` keeps when that began)."""
    key = f"no-sync-standby:{db.name if db else ''}"
    if db is None or db.replication != "synchronous":
        since.pop(key, None)
        return False
    primaries = [r for r in reports if r.get("role") == "primary" and r.get("writable")]
    if any(r.get("sync_standby") and not r.get("stale") for r in primaries) or not primaries:
        since.pop(key, None)
        return False
    return now - since.setdefault(key, now) >= db.standby_timeout


def _site_of_slot(slot: str, spec: PlatformSpec) -> str | None:
    for site in spec.workload_sites:
        if slot == slot_name(site.name):
            return site.name
    return None
