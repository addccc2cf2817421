"""Base backups, WAL archive, retention, verification and point-in-time restores.

A site's repository (``data/<db>/<site>/repo``) holds ``base/<id>/`` (a plain
``pg_basebackup`` with its manifest and ``alwayson-backup.json``) and ``wal/`` (every
segment, archived by PostgreSQL's ``archive_command`` with ``archive_mode = always``, so
the standby's site archives what it receives too). :func:`mirror` copies what one site
has and the other lacks, only while the site link between them is up.

When a backup ends, alwayson takes a short SHARE lock on every table (writers wait a few
milliseconds), creates the restore point ``alwayson-<id>`` and records each table's row
count and ordered checksum *at that point*. ``verify`` runs ``pg_verifybackup`` (catches a
changed or missing file), restores into a scratch instance up to that restore point,
and compares the checksums: a backup is good only when it really restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from alwayson.data.engines import Engine, Postmaster, conninfo, free_bytes, query
from alwayson.data.layout import SUPERUSER, DatabaseConfig
from alwayson.data.links import Partitions
from alwayson.data.settings import postgresql_conf
from alwayson.util.addresses import split_hostport
from alwayson.util.errors import AlwaysonError, TemporaryError

if TYPE_CHECKING:
    from alwayson.data.stewarding import Steward

RECORD = "alwayson-backup.json"
READY_TIMEOUT = 180.0


def repo_of(cfg: DatabaseConfig) -> Path:
    return Path(cfg.repo_dir)


def list_backups(cfg: DatabaseConfig) -> list[dict[str, Any]]:
    out = []
    for folder in sorted((repo_of(cfg) / "base").glob("*")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads((folder / RECORD).read_text()))
    return out


def _chown_tree(engine: Engine, root: Path) -> None:
    uid, gid = engine.ident.uid, engine.ident.gid
    if uid is None or gid is None:
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


async def checksums(dsn: str) -> dict[str, dict[str, Any]]:
    tables = await query(
        dsn,
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
        "('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    out: dict[str, dict[str, Any]] = {}
    for schema, table in tables:
        rows = await query(
            dsn,
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            f'FROM "{schema}"."{table}" t',
            timeout=120,
        )
        out[f"{schema}.{table}"] = {"rows": rows[0][0], "md5": rows[0][1]}
    return out


async def _restore_point(st: Steward, name: str) -> tuple[str, dict[str, dict[str, Any]], float]:
    """Restore point and checksums with no write in between (SHARE locks, one transaction)."""
    dsn = st.admin_dsn(dbname=st.name)
    conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=3)
    async with conn, conn.transaction():
        cur = await conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        tables = [r[0] for r in await cur.fetchall()]
        if tables:
            await conn.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE MODE")
        cur = await conn.execute("SELECT pg_create_restore_point(%s)::text", (name,))
        row = await cur.fetchone()
        lsn = str(row[0]) if row else ""
        at = time.time()
        sums: dict[str, dict[str, Any]] = {}
        for table in sorted(tables):
            cur = await conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), "
                f"'')) FROM {table} t"
            )
            got = await cur.fetchone()
            assert got is not None
            sums[table.replace('"', "")] = {"rows": got[0], "md5": got[1]}
    return lsn, sums, at


async def _wait_archived(st: Steward, lsn: str) -> None:
    rows = await query(st.admin_dsn(), "SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))
    segment = rows[0][0]
    await query(st.admin_dsn(), "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while not (repo_of(st.cfg) / "wal" / segment).exists():
        if time.monotonic() > deadline:
            raise AlwaysonError(f"WAL segment {segment} was not archived within 60s")
        await asyncio.sleep(0.1)


async def create(st: Steward, verify: bool) -> dict[str, Any]:
    cfg = st.cfg
    repo = repo_of(cfg)
    size_rows = await query(
        st.admin_dsn(), "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"
    )
    size = int(size_rows[0][0] or 0)
    free = free_bytes(repo)
    if free - size < cfg.keep_free:
        raise AlwaysonError(
            f"backup repository {repo} has {free} bytes free; a backup of about {size} bytes "
            f"would leave less than keep_free ({cfg.keep_free} bytes, "
            "databases[].backup.keep_free). Free space there or lower keep_free. Nothing was "
            "written and the primary is untouched"
        )
    ident = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{int(time.time() * 1000) % 1000:03d}"
    target = repo / "base" / ident
    host, port = split_hostport(cfg.listen)
    started = time.time()
    try:
        await st.engine.run(
            "pg_basebackup",
            "-D",
            str(target),
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            SUPERUSER,
            "-X",
            "stream",
            "--checkpoint=fast",
            timeout=3600,
        )
    except AlwaysonError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise AlwaysonError(
            f"base backup failed and its partial files were removed; the primary is "
            f"untouched: {exc}"
        ) from exc
    lsn, sums, finished = await _restore_point(st, f"alwayson-{ident}")
    await _wait_archived(st, lsn)
    label = (target / "backup_label").read_text()
    start_wal = label.split("(file ", 1)[1].split(")", 1)[0] if "(file " in label else ""
    record: dict[str, Any] = {
        "id": ident,
        "database": cfg.name,
        "site": cfg.site,
        "path": str(target),
        "started_at": started,
        "finished_at": finished,
        "restore_point": f"alwayson-{ident}",
        "restore_point_lsn": lsn,
        "start_wal": start_wal,
        "size_bytes": sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
        "checksums": sums,
        "verified": None,
    }
    _write_record(target, record)
    removed = retain(st)
    record["removed_by_retention"] = removed
    mirror(cfg, st.partitions)
    if verify:
        record = {**record, **await verify_backup(st, ident)}
    await _publish(st, record)
    return {"backup": record}


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / RECORD)


async def _publish(st: Steward, record: dict[str, Any]) -> None:
    with contextlib.suppress(TemporaryError):
        await st.keeper.record(st.name, "backup", record["id"], record)


def retain(st: Steward) -> list[str]:
    """Keep ``retention_count`` newest backups, none older than ``retention_age`` (the newest
    always stays), and the WAL the oldest kept one needs."""
    cfg = st.cfg
    found = list_backups(cfg)
    now = time.time()
    keep = found[-cfg.retention_count :]
    keep = [b for b in keep if now - b["finished_at"] <= cfg.retention_age] or found[-1:]
    removed = [b["id"] for b in found if b not in keep]
    for ident in removed:
        shutil.rmtree(repo_of(cfg) / "base" / ident, ignore_errors=True)
    if keep and keep[0].get("start_wal"):
        oldest = keep[0]["start_wal"]
        for segment in (repo_of(cfg) / "wal").iterdir():
            if (
                len(segment.name) >= 24
                and segment.name[:24] < oldest
                and segment.name[:8] <= oldest[:8]
            ):
                segment.unlink(missing_ok=True)
    return removed


def mirror(cfg: DatabaseConfig, partitions: Partitions) -> int:
    """Copy to each other site's repository what it lacks, while the link is up."""
    copied = 0
    repo = repo_of(cfg)
    for peer, other in cfg.peer_repos.items():
        if not partitions.connected(cfg.site, peer):
            continue
        other_repo = Path(other)
        if not other_repo.exists():
            continue
        for sub in ("wal", "base"):
            source = repo / sub
            if not source.exists():
                continue
            for item in source.iterdir():
                dest = other_repo / sub / item.name
                if dest.exists() or item.name.endswith((".part", ".tmp")):
                    continue
                if item.is_dir():
                    if not (item / RECORD).exists():
                        continue
                    tmp = dest.with_name(dest.name + ".part")
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(item, tmp)
                    tmp.replace(dest)
                else:
                    tmp = dest.with_name(dest.name + ".part")
                    shutil.copy2(item, tmp)
                    tmp.replace(dest)
                copied += 1
    return copied


def _scratch_address(cfg: DatabaseConfig, port: int) -> str:
    host, _ = split_hostport(cfg.listen)
    parts = host.split(".")
    parts[3] = str(int(parts[3]) + 2)
    return f"{'.'.join(parts)}:{port}"


async def _recover(
    st: Steward, backup: Path, into: Path, address: str, target: dict[str, str]
) -> Postmaster:
    cfg = st.cfg
    shutil.rmtree(into, ignore_errors=True)
    into.parent.mkdir(parents=True, exist_ok=True)
    st.engine.ident.check_reachable(into.parent)
    shutil.copytree(backup, into, ignore=shutil.ignore_patterns(RECORD, "backup_manifest"))
    into.chmod(0o700)
    text = postgresql_conf(
        cfg, address, [], restore_from=repo_of(cfg), recovery_target=target, archive=False
    )
    (into / "alwayson.conf").write_text(text)
    (into / "recovery.signal").write_text("")
    (into / "standby.signal").unlink(missing_ok=True)
    _chown_tree(st.engine, into)
    pm = st.engine.spawn(into, st.log_dir / f"{cfg.name}@{cfg.site}.{into.parent.name}.pg.log")
    dsn = conninfo(address, SUPERUSER, cfg.superuser_password)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not pm.alive():
            raise AlwaysonError(
                f"the restored instance in {into} exited during recovery (see "
                f"{st.log_dir}/{cfg.name}@{cfg.site}.{into.parent.name}.pg.log)"
            )
        with contextlib.suppress(TemporaryError):
            rows = await query(dsn, "SELECT pg_is_in_recovery()", timeout=2)
            if rows and rows[0][0] is False:
                return pm
        if time.monotonic() > deadline:
            await pm.stop("immediate")
            raise AlwaysonError(
                f"the restored instance did not finish recovery in {READY_TIMEOUT:.0f}s"
            )
        await asyncio.sleep(0.1)


async def verify_backup(st: Steward, ident: str) -> dict[str, Any]:
    cfg = st.cfg
    folder = repo_of(cfg) / "base" / ident
    if not (folder / RECORD).exists():
        raise AlwaysonError(
            f"no backup {ident!r} in {repo_of(cfg) / 'base'} (see `alwayson backup list`)"
        )
    record = json.loads((folder / RECORD).read_text())
    began = time.time()
    result: dict[str, Any] = {"verified_at": began}
    try:
        await st.engine.run("pg_verifybackup", "--ignore", RECORD, str(folder), timeout=600)
    except AlwaysonError as exc:
        result.update(verified=False, problem=f"pg_verifybackup: {exc}")
    else:
        scratch = Path(cfg.data_dir).parent / "scratch" / "pgdata"
        address = _scratch_address(cfg, 5432)
        try:
            pm = await _recover(
                st,
                folder,
                scratch,
                address,
                {
                    "recovery_target_name": record["restore_point"],
                    "recovery_target_action": "promote",
                },
            )
            try:
                got = await checksums(
                    conninfo(address, SUPERUSER, cfg.superuser_password, cfg.name)
                )
            finally:
                await pm.stop("immediate")
                shutil.rmtree(scratch.parent, ignore_errors=True)
            expected = record["checksums"]
            wrong = sorted(t for t in set(expected) | set(got) if expected.get(t) != got.get(t))
            if wrong:
                result.update(verified=False, problem=f"checksums differ for {', '.join(wrong)}")
            else:
                result.update(
                    verified=True,
                    problem=None,
                    tables=len(got),
                    rows=sum(v["rows"] for v in got.values()),
                )
        except AlwaysonError as exc:
            result.update(verified=False, problem=f"restore failed: {exc}")
    result["verify_seconds"] = time.time() - began
    record.update(result)
    _write_record(folder, record)
    await _publish(st, record)
    return result


async def verify(st: Steward, ident: str) -> dict[str, Any]:
    return {"backup": ident, **await verify_backup(st, ident)}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


async def restore(st: Steward, to_time: float | None, into: str) -> dict[str, Any]:
    cfg = st.cfg
    found = [b for b in list_backups(cfg) if b.get("verified") is not False]
    if not found:
        raise AlwaysonError(f"{cfg.name} has no usable backup yet (`alwayson backup create`)")
    if to_time is not None:
        usable = [b for b in found if b["finished_at"] <= to_time]
        if not usable:
            raise AlwaysonError(
                f"{_iso(to_time)} is before the oldest backup; the oldest restorable time is "
                f"{_iso(found[0]['finished_at'])}"
            )
        base = usable[-1]
        target = {"recovery_target_time": _iso(to_time), "recovery_target_action": "promote"}
    else:
        base, target = found[-1], {"recovery_target_action": "promote"}
    if to_time is not None and to_time > time.time():
        raise AlwaysonError(f"{_iso(to_time)} is in the future; nothing to restore up to it yet")
    # Recovery must find a commit after the target and the WAL holding it in the archive:
    # commit one transaction now and archive its segment.
    marker = await query(st.admin_dsn(), "SELECT txid_current(), pg_current_wal_lsn()::text")
    await _wait_archived(st, str(marker[0][1]))
    if into in st.restores:
        raise AlwaysonError(f"a restore named {into!r} already runs; drop it first")
    port = 5433 + len(st.restores)
    address = _scratch_address(cfg, port)
    folder = Path(cfg.data_dir).parent.parent / "restores" / into / "pgdata"
    pm = await _recover(st, repo_of(cfg) / "base" / base["id"], folder, address, target)
    st.restores[into] = pm
    url = f"postgresql://{SUPERUSER}:{cfg.superuser_password}@{address}/{cfg.name}"
    return {
        "into": into,
        "address": address,
        "url": url,
        "backup": base["id"],
        "to_time": to_time,
        "path": str(folder),
    }


async def drop_restore(st: Steward, into: str) -> dict[str, Any]:
    pm = st.restores.pop(into, None)
    if pm is None:
        raise AlwaysonError(f"no restore named {into!r} runs here")
    await pm.stop("fast")
    shutil.rmtree(Path(st.cfg.data_dir).parent.parent / "restores" / into, ignore_errors=True)
    return {"dropped": into}
