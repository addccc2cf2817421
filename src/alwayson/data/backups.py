"""Base backups and their verification.

When a backup ends, alwayson takes a short SHARE lock on every table (writers wait a few
milliseconds), creates the restore point ``alwayson-<id>`` and records each table's row
count and ordered checksum *at that point*. ``verify`` runs ``pg_verifybackup`` (catches a
changed or missing file), restores into a scratch instance up to that restore point,
and compares the checksums: a backup is good only when it really restores.

The repository's files, retention and mirroring are in :mod:`alwayson.data.archives`,
restores in :mod:`alwayson.data.restoring`. Every function here takes a
:class:`~alwayson.data.archives.BackupPort` and returns what it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg

from alwayson.data.archives import (
    RECORD,
    BackupPort,
    dir_size,
    repo_of,
    retain,
    wait_archived,
    write_record,
)
from alwayson.data.engines import conninfo, free_bytes, query
from alwayson.data.layout import SUPERUSER
from alwayson.data.restoring import check_restore_name, recover, scratch_address
from alwayson.util.addresses import split_hostport
from alwayson.util.errors import AlwaysonError, TemporaryError

__all__ = ["check_restore_name", "create", "forget", "verify", "verify_backup"]


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


async def _restore_point(st: BackupPort, name: str) -> tuple[str, dict[str, dict[str, Any]], float]:
    """Restore point and checksums with no write in between (SHARE locks, one transaction)."""
    try:
        return await _restore_point_now(st, name)
    except psycopg.Error as exc:
        raise TemporaryError(f"restore point {name}: {exc}") from exc


async def _restore_point_now(
    st: BackupPort, name: str
) -> tuple[str, dict[str, dict[str, Any]], float]:
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
        at = st.clock.wall()
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


async def create(st: BackupPort, verify: bool) -> dict[str, Any]:
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
    now = st.clock.wall()
    ident = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"
    target = repo / "base" / ident
    host, port = split_hostport(cfg.listen)
    started = now
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
    await wait_archived(st, lsn)
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
        "size_bytes": await asyncio.to_thread(dir_size, target),
        "checksums": sums,
        "verified": None,
    }
    write_record(target, record)
    # Files are copied and removed in threads: the event loop also renews the lease.
    removed = await asyncio.to_thread(retain, cfg, st.clock.wall())
    await forget(st, removed)
    record["removed_by_retention"] = [b["id"] for b in removed]
    # The agent's mirroring loop copies it to the other site within a second.
    if verify:
        record = {**record, **await verify_backup(st, ident)}
    await _publish(st, record)
    return {"backup": record}


async def _publish(st: BackupPort, record: dict[str, Any]) -> None:
    with contextlib.suppress(TemporaryError):
        await st.board.record(st.name, "backup", record["id"], record)


async def forget(st: BackupPort, removed: list[dict[str, Any]]) -> None:
    """Mark backups retention removed, so `backup list` and restore checks skip them."""
    for backup in removed:
        gone = {
            **backup,
            "removed_at": st.clock.wall(),
            "removed_by": f"retention on {st.cfg.site}",
        }
        await _publish(st, gone)


async def verify_backup(st: BackupPort, ident: str) -> dict[str, Any]:
    cfg = st.cfg
    folder = repo_of(cfg) / "base" / ident
    if not (folder / RECORD).exists():
        raise AlwaysonError(
            f"no backup {ident!r} in {repo_of(cfg) / 'base'} (see `alwayson backup list`)"
        )
    record = json.loads((folder / RECORD).read_text())
    began = st.clock.wall()
    result: dict[str, Any] = {"verified_at": began}
    try:
        await st.engine.run("pg_verifybackup", "--ignore", RECORD, str(folder), timeout=600)
    except AlwaysonError as exc:
        result.update(verified=False, problem=f"pg_verifybackup: {exc}")
    else:
        scratch = Path(cfg.data_dir).parent / "scratch" / "pgdata"
        address = scratch_address(cfg, 5432)
        try:
            pm = await recover(
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
                await asyncio.to_thread(shutil.rmtree, scratch.parent, True)
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
    result["verify_seconds"] = st.clock.wall() - began
    record.update(result)
    write_record(folder, record)
    await _publish(st, record)
    return result


async def verify(st: BackupPort, ident: str) -> dict[str, Any]:
    return {"backup": ident, **await verify_backup(st, ident)}
