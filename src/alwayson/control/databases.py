"""The operator's side of the databases: status, switchover, failover, failback, backups.

The controller never decides who writes: the site agents do, through the lease on etcd,
even while it is down. It reads what they report (``db/<name>/site/<site>``), checks requests
against it so a bad one is refused before anything moves, and hands the agents one request
at a time (``db/<name>/request``); the agent that carries it out records the result under
``db/<name>/record/<id>``. A forced failover is the one exception: it revokes the lease
directly, so the primary can no longer renew whatever state it is in.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from alwayson.data.backups import check_restore_name
from alwayson.data.board import Board
from alwayson.data.engines import find_binaries
from alwayson.data.layout import SUPERUSER, endpoint_address, secrets_of
from alwayson.spec.models import Database, PlatformSpec
from alwayson.store.base import AuditEntry, Event, StateStore
from alwayson.util.clocks import Clock
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError, TemporaryError
from alwayson.util.replication import slot_name

if TYPE_CHECKING:
    from alwayson.control.ports import Boards, SpecReader

STALE_AFTER = 5.0


CREDENTIAL_ROLES = ("app", "admin")


def request_key(db: str) -> str:
    return f"db/{db}/request"


class DatabaseOps:
    """``store`` is the controller's own (audit); every ``db/…`` key is on etcd (``boards``)."""

    def __init__(
        self,
        store: StateStore,
        specs: SpecReader,
        clock: Clock,
        boards: Boards,
        state_dir: Path,
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.specs = specs
        self.clock = clock
        self.boards = boards
        self._filing = asyncio.Lock()

    def _spec(self) -> PlatformSpec:
        return self.specs.spec()

    @property
    def board(self) -> Board:
        return self.boards.board(self._spec())

    @property
    def keys(self) -> StateStore:
        return self.boards.keys(self._spec())

    async def file_events(self) -> int:
        """Move the events the agents filed on etcd into the controller's store."""
        spec = self.specs.spec_or_none()
        if spec is None or not spec.databases:
            return 0
        board = self.boards.board(spec)
        async with self._filing:  # the loop and an API request may both ask
            pending: list[tuple[str, Event]] = await board.pending_events()
            for _, event in pending:
                await self.store.append_event(event)
            await board.forget_events([key for key, _ in pending])
        return len(pending)

    def database(self, name: str | None) -> Database:
        spec = self._spec()
        if not spec.databases:
            raise NotFoundError("the spec declares no databases (add a `databases:` section)")
        if name is None:
            if len(spec.databases) > 1:
                names = ", ".join(d.name for d in spec.databases)
                raise PermanentError(f"several databases ({names}); name one with --database")
            return spec.databases[0]
        for db in spec.databases:
            if db.name == name:
                return db
        known = ", ".join(d.name for d in spec.databases)
        raise NotFoundError(f"unknown database {name!r} (databases: {known})")

    async def status(self) -> list[dict[str, Any]]:
        spec = self.specs.spec_or_none()
        if spec is None:
            return []
        out = []
        now = self.clock.wall()
        for index, db in enumerate(spec.databases):
            try:
                out.append(await self._status_of(spec, index, db, now))
            except TemporaryError as exc:
                out.append(self._unreachable(spec, db, exc))
        return out

    def _unreachable(self, spec: PlatformSpec, db: Database, exc: Exception) -> dict[str, Any]:
        """etcd cannot answer (no quorum, or none of its members reachable from here)."""
        why = (
            f"etcd cannot be reached or has no quorum ({exc}): no site can renew or take "
            f"{db.name}'s lease, so none takes writes until two of the three sites' etcd "
            "members are back (safety first)"
        )
        return {
            "name": db.name,
            "replication": db.replication,
            "primary_site": db.primary_site,
            "objectives": db.objectives.model_dump(mode="json"),
            "lease": None,
            "lease_expires_in": None,
            "sites": [
                {"site": s.name, "role": "unknown", "stale": True} for s in spec.workload_sites
            ],
            "pending_request": None,
            "recent": [],
            "alerts": [why],
            "store_error": str(exc),
        }

    async def _status_of(
        self, spec: PlatformSpec, index: int, db: Database, now: float
    ) -> dict[str, Any]:
        board = self.boards.board(spec)
        keys = self.boards.keys(spec)
        lease = await board.read_lease(db.name)
        sites = []
        for site in [s.name for s in spec.workload_sites]:
            found = await keys.get(f"db/{db.name}/site/{site}")
            report: dict[str, Any] = (
                dict(found.value) if found else {"site": site, "role": "unknown"}
            )
            report["stale"] = not found or now - float(report.get("reported_at", 0)) > STALE_AFTER
            report["endpoint_url"] = (
                f"postgresql://{db.name}:***@{endpoint_address(spec, site, index)}/{db.name}"
            )
            sites.append(report)
        records = await self.records(db.name, limit=5)
        request = await keys.get(request_key(db.name))
        return {
            "name": db.name,
            "replication": db.replication,
            "primary_site": db.primary_site,
            "objectives": db.objectives.model_dump(mode="json"),
            "lease": lease.to_json() if lease else None,
            "lease_expires_in": (lease.expires_at - now) if lease else None,
            "sites": sites,
            "pending_request": request.value if request and request.value else None,
            "recent": records,
            "alerts": [s["alert"] for s in sites if s.get("alert")],
        }

    async def records(self, db: str, limit: int = 50) -> list[dict[str, Any]]:
        found = await self.keys.list_prefix(f"db/{db}/record/", limit=10_000)
        values = [v.value for _, v in found]
        values.sort(key=lambda r: float(r.get("finished_at") or r.get("promoted_at") or 0))
        return values[-limit:]

    async def result(self, db: str, ident: str) -> dict[str, Any] | None:
        self.database(db)
        found = await self.keys.get(f"db/{db}/record/{ident}")
        return dict(found.value) if found else None

    async def _site_report(self, db: Database, site: str) -> dict[str, Any]:
        found = await self.keys.get(f"db/{db.name}/site/{site}")
        return dict(found.value) if found else {}

    def _site(self, site: str) -> str:
        workload = [s.name for s in self._spec().workload_sites]
        if site not in workload:
            raise NotFoundError(f"unknown workload site {site!r} (sites: {', '.join(workload)})")
        return site

    async def credentials(
        self, name: str | None, role: str, site: str | None, actor: str
    ) -> dict[str, Any]:
        """How an operator reaches a database: its endpoint in ``site`` (default: the
        primary site), the ``app`` role or the superuser (``admin``), with the password and
        the psql to use. Audited with who, which role and where; never the password."""
        db = self.database(name)
        if role not in CREDENTIAL_ROLES:
            raise PermanentError(f"role: {role!r} is not one of {', '.join(CREDENTIAL_ROLES)}")
        spec = self._spec()
        where = self._site(site) if site else db.primary_site
        passwords = secrets_of(self.state_dir, spec)[db.name]
        user, password = (
            (db.name, passwords["app"])
            if role == "app"
            else (
                SUPERUSER,
                passwords["superuser"],
            )
        )
        host, port = endpoint_address(spec, where, spec.databases.index(db)).rsplit(":", 1)
        dbname = db.name
        url = f"postgresql://{user}:{quote(password, safe='')}@{host}:{port}/{dbname}"
        await self.store.append_audit(
            AuditEntry(
                at=self.clock.wall(),
                actor=actor,
                action="db-credentials",
                detail={"database": db.name, "role": role, "site": where},
            )
        )
        psql = find_binaries(db.bin_dir) / "psql"
        return {
            "database": db.name,
            "role": role,
            "site": where,
            "host": host,
            "port": int(port),
            "user": user,
            "dbname": dbname,
            "password": password,
            "url": url,
            "psql": str(psql),
        }

    async def request(self, name: str | None, op: str, actor: str, **params: Any) -> dict[str, Any]:
        db = self.database(name)
        if op == "failback":  # a switchover back to the spec's primary site
            params["to"] = db.primary_site
        await self._check(db, op, params)
        ident = f"{op}-{int(self.clock.wall() * 1000)}-{secrets.token_hex(3)}"
        request = {"id": ident, "op": op, "at": self.clock.wall(), "actor": actor, **params}
        keys = self.keys
        found = await keys.get(request_key(db.name))
        if found and found.value:
            pending = found.value
            raise ConflictError(
                f"{db.name}: request {pending.get('id')} ({pending.get('op')}) is still being "
                "carried out; wait for it (alwayson db status)"
            )
        if not await keys.compare_and_set(
            request_key(db.name), found.version if found else None, request
        ):
            raise ConflictError(f"{db.name}: another request arrived at the same moment; retry")
        await self.store.append_audit(
            AuditEntry(at=self.clock.wall(), actor=actor, action=f"db-{op}", detail=request)
        )
        return request

    async def _check(self, db: Database, op: str, params: dict[str, Any]) -> None:
        lease = await self.board.read_lease(db.name)
        holder = lease.holder if lease else None
        if op in ("switchover", "failback"):
            to = self._site(str(params["to"]))
            if holder is None:
                raise ConflictError(f"{db.name} has no primary right now; nothing to switch over")
            if holder == to:
                raise ConflictError(
                    f"{to} is already the primary of {db.name}"
                    + ("; nothing to fail back" if op == "failback" else "")
                )
            primary = await self._site_report(db, holder)
            row = next(
                (r for r in primary.get("replication", []) if r.get("standby") == slot_name(to)),
                None,
            )
            if row is None or row.get("state") != "streaming":
                raise ConflictError(
                    f"{to} is not streaming from {holder}; a switchover would lose writes. "
                    "Nothing was changed"
                )
            if int(row.get("lag_bytes", 0)) > int(db.switchover_max_lag):
                raise ConflictError(
                    f"{to} is {row['lag_bytes']} bytes behind {holder} (switchover_max_lag "
                    f"{int(db.switchover_max_lag)}); wait for it to catch up. Nothing was changed"
                )
        elif op in ("backup", "verify", "restore", "drop-restore"):
            if holder is None:
                raise ConflictError(f"{db.name} has no primary right now; try again after failover")
            if op == "restore":
                check_restore_name(str(params.get("into")))
            if op == "restore" and params.get("to_time") is not None:
                backups = await self.backups(db.name)
                usable = [b for b in backups if b.get("verified") is not False]
                if not usable:
                    raise ConflictError(f"{db.name} has no usable backup (alwayson backup create)")
                oldest = min(float(b["finished_at"]) for b in usable)
                if float(params["to_time"]) < oldest:
                    raise PermanentError(
                        f"{_iso(float(params['to_time']))} is before the oldest backup of "
                        f"{db.name}; the oldest restorable time is {_iso(oldest)}"
                    )
            if op == "verify":
                found = await self.keys.get(f"db/{db.name}/backup/{params['backup']}")
                if not found:
                    raise NotFoundError(
                        f"no backup {params['backup']!r} of {db.name} (alwayson backup list)"
                    )

    async def failover(self, name: str | None, to: str, actor: str) -> dict[str, Any]:
        """Forced: revoke the lease for ``to``; the holder cannot renew and fences."""
        db = self.database(name)
        to = self._site(to)
        lease = await self.board.read_lease(db.name)
        if lease is not None and lease.holder == to:
            raise ConflictError(f"{to} is already the primary of {db.name}")
        report = await self._site_report(db, to)
        if report.get("role") not in ("standby",):
            raise ConflictError(
                f"{to} has no running standby of {db.name} (role {report.get('role', 'unknown')}); "
                "nothing was changed"
            )
        new = await self.board.revoke(db.name, to)
        detail = {"database": db.name, "to": to, "previous_holder": lease.holder if lease else None}
        await self.store.append_audit(
            AuditEntry(at=self.clock.wall(), actor=actor, action="db-failover", detail=detail)
        )
        return {
            "revoked": new.to_json(),
            "to": to,
            "expires_in": new.expires_at - self.clock.wall(),
        }

    async def backups(self, db: str) -> list[dict[str, Any]]:
        """The backups that still exist (retention marks the ones it removed)."""
        found = await self.keys.list_prefix(f"db/{db}/backup/", limit=10_000)
        return [v.value for _, v in found if not v.value.get("removed_at")]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
