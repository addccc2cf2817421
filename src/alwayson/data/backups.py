"""Base backups, WAL archive, retention, verification and point-in-time restores.

A site's repository (``data/<db>/<site>/repo``) holds ``base/<id>/`` (a plain
``pg_basebackup`` with its manifest and ``alwayson-backup.json``) and ``wal/`` (every
segment, archived by PostgreSQL's ``archive_command`` with ``archive_mode = always``, so
the standby's site archives what it receives too). :func:`mirror` copies what one site
has and the other lacks, only while the site link between them is up; every site applies
retention (:func:`retain`) to its own repository, so both keep the same backups.

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
import functools
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from alwayson.data.engines import (
    Engine,
    Identity,
    Postmaster,
    conninfo,
    free_bytes,
    query,
    wait_backends_gone,
)
from alwayson.data.layout import SUPERUSER, DatabaseConfig, write_private
from alwayson.data.settings import postgresql_conf
from alwayson.util.addresses import split_hostport
from alwayson.util.errors import AlwaysonError, PermanentError, TemporaryError
from alwayson.util.sitelinks import Partitions

if TYPE_CHECKING:
    from alwayson.data.stewarding import Steward

RECORD = "alwayson-backup.json"
READY_TIMEOUT = 180.0


def repo_of(cfg: DatabaseConfig) -> Path:
    return Path(cfg.repo_dir)


def list_backups(cfg: DatabaseConfig) -> list[dict[str, Any]]:
    return _records(repo_of(cfg))


def _records(repo: Path) -> list[dict[str, Any]]:
    """The finished backups in a repository, oldest first (ids sort by time)."""
    out = []
    for folder in sorted((repo / "base").glob("*")):
        if folder.name.startswith(".") or folder.name.endswith((".part", ".tmp")):
            continue
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads((folder / RECORD).read_text()))
    return out


def kept(cfg: DatabaseConfig, found: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Retention: the ``retention_count`` newest, none older than ``retention_age``; the
    newest always stays."""
    keep = found[-cfg.retention_count :]
    return [b for b in keep if now - float(b["finished_at"]) <= cfg.retention_age] or found[-1:]


def wal_needed(segment: str, oldest_start: str | None) -> bool:
    """Whether an archived file may be needed by a kept backup starting at
    ``oldest_start`` (history files and anything newer always are)."""
    if not oldest_start or len(segment) < 24 or segment.startswith("."):
        return True
    return not (segment[:24] < oldest_start and segment[:8] <= oldest_start[:8])


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _chown_tree(engine: Engine, root: Path) -> None:
    _own_tree(engine.ident, root)


def _own_tree(ident: Identity, root: Path) -> None:
    """Give ``root`` (a file or a folder and all below it) to PostgreSQL's user."""
    uid, gid = ident.uid, ident.gid
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
    try:
        return await _restore_point_now(st, name)
    except psycopg.Error as exc:
        raise TemporaryError(f"restore point {name}: {exc}") from exc


async def _restore_point_now(
    st: Steward, name: str
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
        "size_bytes": await asyncio.to_thread(_size, target),
        "checksums": sums,
        "verified": None,
    }
    _write_record(target, record)
    # Files are copied and removed in threads: the event loop also renews the lease.
    removed = await asyncio.to_thread(retain, cfg)
    await forget(st, removed)
    record["removed_by_retention"] = [b["id"] for b in removed]
    # The agent's mirroring loop copies it to the other site within a second.
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


async def forget(st: Steward, removed: list[dict[str, Any]]) -> None:
    """Mark backups retention removed, so `backup list` and restore checks skip them."""
    for backup in removed:
        gone = {**backup, "removed_at": time.time(), "removed_by": f"retention on {st.cfg.site}"}
        await _publish(st, gone)


def retain(cfg: DatabaseConfig, now: float | None = None) -> list[dict[str, Any]]:
    """Apply retention to this site's repository: remove the base backups :func:`kept`
    leaves out and the WAL older than the oldest kept one needs. Every site does it to
    its own repository (the mirrored copies too), so both converge on the same set."""
    repo = repo_of(cfg)
    found = _records(repo)
    keep = kept(cfg, found, time.time() if now is None else now)
    removed = [b for b in found if b not in keep]
    for backup in removed:
        shutil.rmtree(repo / "base" / str(backup["id"]), ignore_errors=True)
    oldest = keep[0].get("start_wal") if keep else None
    wal = repo / "wal"
    if oldest and wal.exists():
        for segment in wal.iterdir():
            if not wal_needed(segment.name, oldest):
                segment.unlink(missing_ok=True)
    return removed


def mirror(cfg: DatabaseConfig, partitions: Partitions, ident: Identity) -> int:
    """Copy to each other site's repository what it lacks, while the link is up: never
    a backup (or WAL) that the destination's retention would remove at once, so a backup
    one site dropped does not come back from the other. Backup records (their
    verification) follow from the site that made the backup. Copies belong to
    PostgreSQL's user: the other site's archiver compares its own segments with them and
    its restores read them."""
    copied = 0
    repo = repo_of(cfg)
    now = time.time()
    for peer, other in cfg.peer_repos.items():
        if not partitions.connected(cfg.site, peer):
            continue
        other_repo = Path(other)
        if not other_repo.exists():
            continue
        theirs = _records(other_repo)
        keep = kept(cfg, theirs, now)
        oldest = keep[0].get("start_wal") if keep else None
        # Only into folders the other site prepared (they belong to its PostgreSQL user).
        source = repo / "base"
        ready = (other_repo / "base").is_dir()
        for item in sorted(source.iterdir()) if source.exists() and ready else []:
            if not item.is_dir() or item.name.startswith(".") or ".part" in item.name:
                continue
            try:
                text = (item / RECORD).read_text()
                record = json.loads(text)
            except (OSError, ValueError):
                continue  # not finished yet
            dest = other_repo / "base" / item.name
            if dest.exists():
                if record.get("site") == cfg.site and _read(dest / RECORD) != text:
                    _write_record(dest, record)
                continue
            ids = {b["id"] for b in kept(cfg, sorted([*theirs, record], key=_ident), now)}
            if record["id"] not in ids:
                continue
            if _copy_in(functools.partial(shutil.copytree, item), dest, ident):
                copied += 1
            theirs = sorted([*theirs, record], key=_ident)
        wal = repo / "wal"
        ready = (other_repo / "wal").is_dir()
        for item in sorted(wal.iterdir()) if wal.exists() and ready else []:
            dest = other_repo / "wal" / item.name
            if (
                dest.exists()
                or item.name.startswith(".")
                or item.name.endswith((".part", ".tmp"))
                or not wal_needed(item.name, oldest)
            ):
                continue
            if _copy_in(functools.partial(shutil.copy2, item), dest, ident):
                copied += 1
    return copied


def _copy_in(copy: Callable[[Path], object], dest: Path, ident: Identity) -> bool:
    """Copy into a private temporary name, then rename: another site's agent copying the
    same item at the same moment, or a crash halfway, never leaves a partial ``dest``."""
    tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    try:
        copy(tmp)
        _own_tree(ident, tmp)
        if dest.exists():
            return False
        try:
            tmp.replace(dest)
        except OSError:
            if dest.exists():  # the other copier won
                return False
            raise
        return True
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _ident(record: dict[str, Any]) -> str:
    return str(record["id"])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _scratch_address(cfg: DatabaseConfig, port: int) -> str:
    host, _ = split_hostport(cfg.listen)
    parts = host.split(".")
    parts[3] = str(int(parts[3]) + 2)
    return f"{'.'.join(parts)}:{port}"


async def _recover(
    st: Steward, backup: Path, into: Path, address: str, target: dict[str, str]
) -> Postmaster:
    cfg = st.cfg
    await asyncio.to_thread(shutil.rmtree, into, True)
    into.parent.mkdir(parents=True, exist_ok=True)
    st.engine.ident.check_reachable(into.parent)
    ignore = shutil.ignore_patterns(RECORD, "backup_manifest")
    await asyncio.to_thread(shutil.copytree, backup, into, ignore=ignore)
    into.chmod(0o700)
    text = postgresql_conf(
        cfg, address, [], restore_from=repo_of(cfg), recovery_target=target, archive=False
    )
    (into / "alwayson.conf").write_text(text)
    (into / "recovery.signal").write_text("")
    (into / "standby.signal").unlink(missing_ok=True)
    await asyncio.to_thread(_chown_tree, st.engine, into)
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
    result["verify_seconds"] = time.time() - began
    record.update(result)
    _write_record(folder, record)
    await _publish(st, record)
    return result


async def verify(st: Steward, ident: str) -> dict[str, Any]:
    return {"backup": ident, **await verify_backup(st, ident)}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


RESTORE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FIRST_RESTORE_PORT = 5433


def restores_file(cfg: DatabaseConfig) -> Path:
    """The restored instances this site runs, so a restarted agent starts them again."""
    return Path(cfg.data_dir).parent / "restores.json"


def restore_folder(cfg: DatabaseConfig, into: str) -> Path:
    return Path(cfg.data_dir).parent / "restores" / into / "pgdata"


def _known_restores(cfg: DatabaseConfig) -> dict[str, dict[str, Any]]:
    try:
        found: dict[str, dict[str, Any]] = json.loads(restores_file(cfg).read_text())
    except (OSError, ValueError):
        return {}
    return found


def _save_restores(cfg: DatabaseConfig, known: dict[str, dict[str, Any]]) -> None:
    write_private(restores_file(cfg), json.dumps(known, indent=1))


def restored(cfg: DatabaseConfig, into: str) -> dict[str, Any] | None:
    """What ``backup restore --into`` made (no password), or None."""
    return _known_restores(cfg).get(into)


def check_restore_name(into: str) -> None:
    if not RESTORE_NAME.match(into):
        raise PermanentError(
            f"--into {into!r}: use lowercase letters, digits, '-' and '_' (it names a folder)"
        )


async def restore(st: Steward, to_time: float | None, into: str) -> dict[str, Any]:
    cfg = st.cfg
    check_restore_name(into)
    known = _known_restores(cfg)
    if into in st.restores or into in known:
        raise AlwaysonError(f"a restore named {into!r} already exists; drop it first")
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
    taken = {split_hostport(r["address"])[1] for r in known.values()}
    port = next(p for p in range(FIRST_RESTORE_PORT, FIRST_RESTORE_PORT + 1000) if p not in taken)
    address = _scratch_address(cfg, port)
    folder = restore_folder(cfg, into)
    pm = await _recover(st, repo_of(cfg) / "base" / base["id"], folder, address, target)
    st.restores[into] = pm
    made = {
        "into": into,
        "address": address,
        "backup": base["id"],
        "to_time": to_time,
        "path": str(folder),
        "made_at": time.time(),
    }
    known[into] = made
    _save_restores(cfg, known)
    url = f"postgresql://{SUPERUSER}:{cfg.superuser_password}@{address}/{cfg.name}"
    return {**made, "url": url}


async def restart_restores(st: Steward) -> None:
    """At agent start: the restored instances died with the previous agent (they are its
    children, with a parent-death signal); start each again from its folder."""
    cfg = st.cfg
    for into, made in sorted(_known_restores(cfg).items()):
        folder = Path(made["path"])
        if into in st.restores or not (folder / "PG_VERSION").exists():
            continue
        log_path = st.log_dir / f"{cfg.name}@{cfg.site}.{into}.pg.log"
        dsn = conninfo(made["address"], SUPERUSER, cfg.superuser_password)
        try:
            await wait_backends_gone(folder, 10.0)
            pm = st.engine.spawn(folder, log_path)
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if not pm.alive():
                    raise AlwaysonError(f"it exited while starting (see {log_path})")
                with contextlib.suppress(TemporaryError):
                    await query(dsn, "SELECT 1", timeout=2)
                    break
                if time.monotonic() > deadline:
                    await pm.stop("immediate")
                    raise AlwaysonError(f"not ready within {READY_TIMEOUT:.0f}s")
                await asyncio.sleep(0.1)
        except AlwaysonError as exc:
            st.last_error = f"restored instance {into}: {exc}"
            with contextlib.suppress(TemporaryError):
                await st.keeper.event(
                    "db-restore-lost", cfg.name, f"{cfg.site}: {into} did not start: {exc}", {}
                )
            continue
        st.restores[into] = pm
        with contextlib.suppress(TemporaryError):
            await st.keeper.event(
                "db-restore-restarted",
                cfg.name,
                f"{cfg.site}: restored instance {into} started again at {made['address']}",
                {"into": into, "address": made["address"], "pid": pm.pid},
            )


async def drop_restore(st: Steward, into: str) -> dict[str, Any]:
    known = _known_restores(st.cfg)
    pm = st.restores.pop(into, None)
    if pm is None and into not in known:
        raise AlwaysonError(f"no restore named {into!r} here")
    if pm is not None:
        await pm.stop("fast")
    made = known.pop(into, None)
    _save_restores(st.cfg, known)
    folder = Path(made["path"]) if made else restore_folder(st.cfg, into)
    await asyncio.to_thread(shutil.rmtree, folder.parent, True)
    return {"dropped": into}
