"""``alwayson db ...`` and ``alwayson backup ...``: the geo-replicated PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from alwayson.cli.common import (
    Failed,
    JsonOpt,
    SpecOpt,
    _call,
    _emit_json,
    _wrap,
    console,
    err,
)
from alwayson.util.durations import parse_duration
from alwayson.util.errors import ConflictError, NotFoundError
from alwayson.util.replication import slot_name

if TYPE_CHECKING:
    from alwayson.api.client import ApiClient

db_app = typer.Typer(
    help="The databases: status, planned switchover, forced failover, failback.",
    no_args_is_help=True,
)
backup_app = typer.Typer(
    help="Base backups, WAL archive, verified restores and point-in-time recovery.",
    no_args_is_help=True,
)

DbOpt = typer.Option(None, "--database", "-d", help="Which database (default: the only one).")
POLL = 0.25


async def _name(client: ApiClient, database: str | None) -> str:
    if database:
        return database
    found = await client.get_json("/api/v1/databases")
    if not found:
        err.print("the spec declares no databases (add a `databases:` section)")
        raise Failed(2)
    if len(found) > 1:
        names = ", ".join(d["name"] for d in found)
        err.print(f"several databases ({names}); name one with --database")
        raise Failed(2)
    return str(found[0]["name"])


# Refusals of a switchover that time cures: the target is rejoining or catching up.
NOT_READY = ("is not streaming from", "bytes behind")


def _wait_option(default: str) -> Any:
    return typer.Option(
        default,
        "--wait",
        help="How long to wait for the target site to stream and catch up before the "
        "switchover (after a failover the old primary rejoins by itself first); 0s refuses "
        "at once.",
    )


def _wait_seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        err.print(f"--wait: {exc}")
        raise Failed(2) from None


async def _post_when_ready(
    client: ApiClient, name: str, body: dict[str, Any], wait: float, what: str
) -> dict[str, Any]:
    """Post the request; while it is refused only because the target is not streaming or
    is behind, ask again until ``wait`` has passed, saying what is awaited."""
    deadline = time.monotonic() + wait
    said = ""
    with console.status(f"{what} ({name}) …") as status:
        while True:
            try:
                request: dict[str, Any] = await client.post_json(
                    f"/api/v1/databases/{name}/requests", body
                )
                return request
            except ConflictError as exc:
                if not any(words in str(exc) for words in NOT_READY):
                    raise
                if time.monotonic() >= deadline:
                    raise ConflictError(
                        f"{exc} (waited {wait:.0f}s; --wait sets how long)" if wait else str(exc)
                    ) from None
                reason = str(exc).split(";")[0]
                if reason != said:
                    said = reason
                    status.update(f"{what} ({name}): waiting, {reason} …")
            await _sleep(1.0)


async def _request(
    client: ApiClient,
    database: str | None,
    body: dict[str, Any],
    timeout: float,
    what: str,
    wait: float = 0.0,
) -> dict[str, Any]:
    """Hand a request to the agents and wait for its recorded result."""
    name = await _name(client, database)
    request = await _post_when_ready(client, name, body, wait, what)
    ident = request["id"]
    deadline = time.monotonic() + timeout
    with console.status(f"{what} ({name}) …"):
        while time.monotonic() < deadline:
            try:
                result: dict[str, Any] = await client.get_json(
                    f"/api/v1/databases/{name}/records/{ident}"
                )
                return result
            except NotFoundError as exc:  # until the agent records its result
                if "no result yet" not in str(exc):
                    raise
            await _sleep(POLL)
    err.print(f"{what}: no result after {timeout:.0f}s; see `alwayson db status` ({ident})")
    raise Failed(1)


def _ask(
    file: Path,
    command: str,
    database: str | None,
    body: dict[str, Any],
    timeout: float,
    wait: float = 0.0,
) -> dict[str, Any]:
    """One request to the agents from the command line, waited for."""
    what = str(body["op"])
    return _call(file, command, lambda c: _request(c, database, body, timeout, what, wait))


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _finish(result: dict[str, Any], as_json: bool, summary: str) -> None:
    if as_json:
        _emit_json(result)
    elif result.get("ok"):
        console.print(summary, markup=False)
    else:
        err.print(f"failed: {result.get('error')}", markup=False)
    if not result.get("ok"):
        raise Failed(1)


def serving_gaps(found: list[dict[str, Any]]) -> list[str]:
    """What keeps each database (rows of ``/api/v1/databases``) from serving: no writable
    primary reported, or, synchronous, no standby named in the lease (commits would wait
    for one). Empty: every database serves."""
    gaps = []
    for db in found:
        primaries = [
            s["site"]
            for s in db["sites"]
            if s.get("role") == "primary" and s.get("writable") and not s.get("stale")
        ]
        lease = db.get("lease") or {}
        if not primaries:
            roles = ", ".join(f"{s['site']} {s.get('role', 'unknown')}" for s in db["sites"])
            gaps.append(f"{db['name']}: no writable primary yet ({roles})")
        elif db["replication"] == "synchronous" and not lease.get("sync_standby"):
            gaps.append(f"{db['name']}: primary in {primaries[0]}, no synchronous standby yet")
    return gaps


def _lag(site: dict[str, Any], primary: dict[str, Any] | None) -> str:
    if site.get("role") == "primary" or primary is None:
        return ""
    row = next(
        (r for r in primary.get("replication", []) if r.get("standby") == slot_name(site["site"])),
        None,
    )
    if row is None:
        return "not streaming"
    return f"{row['lag_bytes']} B / {row['lag_seconds']:.2f} s ({row['sync_state']})"


@db_app.command("status")
def status(database: str | None = DbOpt, file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Per database and site: role, pid, address, endpoint, lag, sync state, timeline, lease."""

    def go() -> None:
        found: list[dict[str, Any]] = _call(
            file, "db status", lambda c: c.get_json("/api/v1/databases")
        )
        if database:
            found = [d for d in found if d["name"] == database]
            if not found:
                err.print(f"unknown database {database!r}")
                raise Failed(2)
        if as_json:
            _emit_json(found)
            return
        if not found:
            console.print("no databases in the spec")
        for db in found:
            lease = db.get("lease") or {}
            console.print(
                f"[bold]{db['name']}[/bold] ({db['replication']}): lease "
                f"{lease.get('holder') or 'free'} epoch {lease.get('epoch', 0)}, expires in "
                f"{(db.get('lease_expires_in') or 0):.1f}s; sync standby: "
                f"{lease.get('sync_standby') or 'none'}"
            )
            primary = next((s for s in db["sites"] if s.get("role") == "primary"), None)
            table = Table(
                "site", "role", "pid", "address", "timeline", "lag", "endpoint (DATABASE_URL)"
            )
            for site in db["sites"]:
                role = site.get("role", "unknown") + (" (stale)" if site.get("stale") else "")
                table.add_row(
                    site["site"],
                    role,
                    str(site.get("pid") or "-"),
                    site.get("address", "-"),
                    str(site.get("timeline") or "-"),
                    _lag(site, primary),
                    site.get("endpoint_url", "-"),
                )
            console.print(table)
            for alert in db.get("alerts", []):
                console.print(f"[red]alert:[/red] {alert}", highlight=False)
            for site in db["sites"]:
                if site.get("role") in ("fenced", "rejoining", "starting") and site.get("verdict"):
                    # What it is doing about it (rejoining by itself, waiting for etcd...).
                    console.print(f"{site['site']}: {site['verdict']}", markup=False)
                elif site.get("fence_reason"):
                    console.print(f"{site['site']}: {site['fence_reason']}", markup=False)
            moves = [
                r
                for r in db.get("recent", [])
                if r.get("kind") in ("failover", "switchover-promotion", "failback", "rejoin")
            ]
            for record in moves[-3:]:
                console.print(_record_line(record), markup=False, highlight=False)

    _wrap(go)


@db_app.command("switchover")
def switchover(
    to: str = typer.Option(..., "--to", help="The standby's site that becomes primary."),
    wait: str = _wait_option("0s"),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Planned: hold new writes, stop the primary cleanly, wait until the standby has
    replayed everything, hand the lease over, promote. No acknowledged write is lost;
    refused when the standby is not streaming or more than switchover_max_lag behind
    (with --wait, asked again until it is ready or the time is up)."""

    def go() -> None:
        seconds = _wait_seconds(wait)
        body = {"op": "switchover", "to": to}
        result = _ask(file, "db switchover", database, body, 90, seconds)
        took = float(result.get("finished_at", 0)) - float(result.get("started_at", 0))
        _finish(result, as_json, f"switched over to {to} in {took:.2f}s")

    _wrap(go)


@db_app.command("failover")
def failover(
    to: str = typer.Option(..., "--to", help="The standby's site that becomes primary."),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Forced: revoke the primary's lease so it fences itself, then the standby in TO takes
    over once the lease has expired. Acknowledged writes the standby lacks are lost (the
    record says how far behind it was)."""

    def go() -> None:
        async def flow(client: ApiClient) -> dict[str, Any]:
            name = await _name(client, database)
            revoked = await client.post_json(f"/api/v1/databases/{name}/failover", {"to": to})
            deadline = time.monotonic() + float(revoked.get("expires_in", 0)) + 30
            with console.status(f"failing over {name} to {to} …"):
                while time.monotonic() < deadline:
                    found = await client.get_json("/api/v1/databases")
                    db = next(d for d in found if d["name"] == name)
                    site = next(s for s in db["sites"] if s["site"] == to)
                    lease = db.get("lease") or {}
                    if lease.get("holder") == to and site.get("writable"):
                        record = await _failover_record(client, name, lease, deadline)
                        return {
                            "ok": True,
                            "database": name,
                            "to": to,
                            "lease": lease,
                            "record": record,
                        }
                    await _sleep(POLL)
            return {"ok": False, "error": f"{to} did not become a writable primary in time"}

        result = _call(file, "db failover", flow)
        record = result.get("record") or {}
        timing = (
            f" (no writes for {record['rto_seconds']:.2f}s from the revocation)"
            if record.get("rto_seconds") is not None
            else ""
        )
        _finish(result, as_json, f"{to} is the primary now{timing}")

    _wrap(go)


async def _failover_record(
    client: ApiClient, name: str, lease: dict[str, Any], deadline: float
) -> dict[str, Any] | None:
    """The new primary's record of this failover (written once it took a write)."""
    while time.monotonic() < deadline:
        found: list[dict[str, Any]] = await client.get_json(f"/api/v1/databases/{name}/records")
        for record in reversed(found):
            if record.get("kind") == "failover" and record.get("epoch") == lease.get("epoch"):
                return dict(record)
        await _sleep(POLL)
    return None


def _record_line(record: dict[str, Any]) -> str:
    kind = str(record.get("kind") or record.get("op") or "?")
    when = _iso(record.get("promoted_at") or record.get("finished_at"))
    line = f"{when} {kind} {record.get('from') or '?'} → {record.get('to') or '?'}"
    if kind == "rejoin":
        line = f"{when} rejoin: {record.get('from')} follows {record.get('follows')}"
        line += f" ({record.get('method')}, by itself)"
    if record.get("rto_seconds") is not None:
        line += f", no writes for {record['rto_seconds']:.2f}s"
    lag = record.get("lag_at_fault") or {}
    if lag.get("wal_bytes_not_received") is not None:
        line += f", {lag['wal_bytes_not_received']} WAL bytes not received"
    if record.get("ok") is False:
        line += f", FAILED: {record.get('error')}"
    return line


@db_app.command("failback")
def failback(
    wait: str = _wait_option("2m"),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move the primary back to the spec's primary_site: a switchover, once that site
    streams from the current primary and has caught up. A lost primary rejoins as a
    standby by itself (pg_rewind or a fresh clone, `db status` shows each step), so right
    after a failover this waits for that, up to --wait."""

    def go() -> None:
        seconds = _wait_seconds(wait)
        result = _ask(file, "db failback", database, {"op": "failback"}, 600, seconds)
        _finish(
            result,
            as_json,
            f"primary back in {result.get('to')} (from {result.get('from')}; "
            f"{result.get('lost_writes', 0)} writes lost)",
        )

    _wrap(go)


@backup_app.command("create")
def create(
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Restore it into a scratch instance."
    ),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A base backup now (plus restore point and table checksums), mirrored to both sites."""

    def go() -> None:
        result = _ask(file, "backup create", database, {"op": "backup", "verify": verify}, 3600)
        backup = result.get("backup") or {}
        shown = f"backup {backup.get('id')}: {backup.get('size_bytes', 0)} bytes"
        if backup.get("verified") is False:
            result["ok"] = False
            result["error"] = (
                f"backup {backup.get('id')} was made but is NOT good: {backup.get('problem')}"
            )
        if backup.get("verified") is not None:
            shown += (
                ", verified"
                if backup.get("verified")
                else f", NOT verified: {backup.get('problem')}"
            )
        _finish(result, as_json, shown)

    _wrap(go)


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@backup_app.command("list")
def list_(database: str | None = DbOpt, file: Path = SpecOpt, as_json: bool = JsonOpt) -> None:
    """Backups with their size and verification result."""

    def go() -> None:
        async def flow(client: ApiClient) -> list[dict[str, Any]]:
            name = await _name(client, database)
            found: list[dict[str, Any]] = await client.get_json(f"/api/v1/databases/{name}/backups")
            return found

        found = _call(file, "backup list", flow)
        if as_json:
            _emit_json(found)
            return
        table = Table("id", "site", "finished", "bytes", "verified", "problem")
        for b in found:
            verified = {True: "yes", False: "FAILED", None: "not yet"}[b.get("verified")]
            table.add_row(
                b["id"],
                b["site"],
                _iso(b.get("finished_at")),
                str(b.get("size_bytes")),
                verified,
                b.get("problem") or "",
            )
        console.print(table)

    _wrap(go)


@backup_app.command("verify")
def verify_(
    backup: str = typer.Argument(..., help="A backup id from `backup list`."),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """pg_verifybackup, then a restore into a scratch instance up to the backup's restore
    point, then every table's checksum compared with the one recorded. Result stored."""

    def go() -> None:
        result = _ask(file, "backup verify", database, {"op": "verify", "backup": backup}, 1800)
        if result.get("ok") and not result.get("verified"):
            result["ok"] = False
            result["error"] = f"backup {backup} is NOT good: {result.get('problem')}"
        _finish(
            result,
            as_json,
            f"backup {backup} verified: {result.get('tables')} tables, "
            f"{result.get('rows')} rows match",
        )

    _wrap(go)


def parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"--to {text!r}: write a time like 2026-11-26T10:15:00Z or epoch seconds")
        raise Failed(2) from None
    if value.tzinfo is None:
        value = value.astimezone()
    return value.timestamp()


@backup_app.command("restore")
def restore(
    to: str | None = typer.Option(None, "--to", help="Point in time (ISO 8601 or epoch seconds)."),
    into: str = typer.Option(
        None, "--into", help="Name of the new instance (default <db>-restored)."
    ),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Restore into a NEW instance (the running primary is never touched): the newest base
    backup before TIME plus archived WAL up to TIME. Prints its address."""

    def go() -> None:
        when = parse_time(to) if to else None

        async def flow(client: ApiClient) -> dict[str, Any]:
            name = await _name(client, database)
            body = {"op": "restore", "to_time": when, "into": into or f"{name}-restored"}
            return await _request(client, name, body, 1800, "restore")

        result = _call(file, "backup restore", flow)
        _finish(
            result,
            as_json,
            f"restored into {result.get('into')} at {result.get('address')} "
            f"from backup {result.get('backup')}: {result.get('url')}",
        )

    _wrap(go)


@backup_app.command("drop")
def drop(
    into: str = typer.Argument(..., help="A restored instance's name."),
    database: str | None = DbOpt,
    file: Path = SpecOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Stop a restored instance and delete its files."""

    def go() -> None:
        result = _ask(file, "backup drop", database, {"op": "drop-restore", "into": into}, 120)
        _finish(result, as_json, f"dropped {into}")

    _wrap(go)
