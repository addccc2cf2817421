"""Point-in-time restores into new instances, and the scratch recovery ``verify`` uses.

A restore is a child PostgreSQL of the site agent on its own loopback address, recorded
in ``restores.json`` so a restarted agent starts it again. These functions return the
postmasters they start; the steward keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from alwayson.data.archives import (
    RECORD,
    BackupPort,
    iso,
    list_backups,
    own_tree,
    repo_of,
    wait_archived,
)
from alwayson.data.engines import Postmaster, conninfo, query, wait_backends_gone
from alwayson.data.layout import SUPERUSER, DatabaseConfig
from alwayson.data.settings import postgresql_conf
from alwayson.util.addresses import split_hostport
from alwayson.util.credentials import write_private
from alwayson.util.errors import AlwaysonError, PermanentError, TemporaryError

READY_TIMEOUT = 180.0
READY_POLL = 0.1
BACKENDS_GONE_TIMEOUT = 10.0


def scratch_address(cfg: DatabaseConfig, port: int) -> str:
    host, _ = split_hostport(cfg.listen)
    parts = host.split(".")
    parts[3] = str(int(parts[3]) + 2)
    return f"{'.'.join(parts)}:{port}"


async def recover(
    st: BackupPort, backup: Path, into: Path, address: str, target: dict[str, str]
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
    await asyncio.to_thread(own_tree, st.engine.ident, into)
    pm = st.engine.spawn(into, st.log_dir / f"{cfg.name}@{cfg.site}.{into.parent.name}.pg.log")
    dsn = conninfo(address, SUPERUSER, cfg.superuser_password)
    deadline = st.clock.monotonic() + READY_TIMEOUT
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
        if st.clock.monotonic() > deadline:
            await pm.stop("immediate")
            raise AlwaysonError(
                f"the restored instance did not finish recovery in {READY_TIMEOUT:.0f}s"
            )
        await st.clock.sleep(READY_POLL)


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


async def restore(
    st: BackupPort, to_time: float | None, into: str, running: Collection[str]
) -> tuple[dict[str, Any], Postmaster]:
    """A new instance from the newest usable base backup up to ``to_time``; returns what
    was made and its postmaster (``running``: the restores this site runs now)."""
    cfg = st.cfg
    check_restore_name(into)
    known = _known_restores(cfg)
    if into in running or into in known:
        raise AlwaysonError(f"a restore named {into!r} already exists; drop it first")
    found = [b for b in list_backups(cfg) if b.get("verified") is not False]
    if not found:
        raise AlwaysonError(f"{cfg.name} has no usable backup yet (`alwayson backup create`)")
    if to_time is not None:
        usable = [b for b in found if b["finished_at"] <= to_time]
        if not usable:
            raise AlwaysonError(
                f"{iso(to_time)} is before the oldest backup; the oldest restorable time is "
                f"{iso(found[0]['finished_at'])}"
            )
        base = usable[-1]
        target = {"recovery_target_time": iso(to_time), "recovery_target_action": "promote"}
    else:
        base, target = found[-1], {"recovery_target_action": "promote"}
    if to_time is not None and to_time > st.clock.wall():
        raise AlwaysonError(f"{iso(to_time)} is in the future; nothing to restore up to it yet")
    # Recovery must find a commit after the target and the WAL holding it in the archive:
    # commit one transaction now and archive its segment.
    marker = await query(st.admin_dsn(), "SELECT txid_current(), pg_current_wal_lsn()::text")
    await wait_archived(st, str(marker[0][1]))
    taken = {split_hostport(r["address"])[1] for r in known.values()}
    port = next(p for p in range(FIRST_RESTORE_PORT, FIRST_RESTORE_PORT + 1000) if p not in taken)
    address = scratch_address(cfg, port)
    folder = restore_folder(cfg, into)
    pm = await recover(st, repo_of(cfg) / "base" / base["id"], folder, address, target)
    made = {
        "into": into,
        "address": address,
        "backup": base["id"],
        "to_time": to_time,
        "path": str(folder),
        "made_at": st.clock.wall(),
    }
    known[into] = made
    _save_restores(cfg, known)
    url = f"postgresql://{SUPERUSER}:{cfg.superuser_password}@{address}/{cfg.name}"
    return {**made, "url": url}, pm


async def restart_restores(
    st: BackupPort, running: Collection[str], adopt: Callable[[str, Postmaster], None]
) -> list[str]:
    """At agent start: the restored instances died with the previous agent (they are its
    children, with a parent-death signal); start each again from its folder and hand it
    to ``adopt`` at once. Returns what went wrong, one sentence per instance."""
    problems: list[str] = []
    cfg = st.cfg
    for into, made in sorted(_known_restores(cfg).items()):
        folder = Path(made["path"])
        if into in running or not (folder / "PG_VERSION").exists():
            continue
        log_path = st.log_dir / f"{cfg.name}@{cfg.site}.{into}.pg.log"
        dsn = conninfo(made["address"], SUPERUSER, cfg.superuser_password)
        try:
            await wait_backends_gone(folder, BACKENDS_GONE_TIMEOUT, st.clock)
            pm = st.engine.spawn(folder, log_path)
            deadline = st.clock.monotonic() + READY_TIMEOUT
            while True:
                if not pm.alive():
                    raise AlwaysonError(f"it exited while starting (see {log_path})")
                with contextlib.suppress(TemporaryError):
                    await query(dsn, "SELECT 1", timeout=2)
                    break
                if st.clock.monotonic() > deadline:
                    await pm.stop("immediate")
                    raise AlwaysonError(f"not ready within {READY_TIMEOUT:.0f}s")
                await st.clock.sleep(READY_POLL)
        except AlwaysonError as exc:
            problems.append(f"restored instance {into}: {exc}")
            with contextlib.suppress(TemporaryError):
                await st.board.event(
                    "db-restore-lost", cfg.name, f"{cfg.site}: {into} did not start: {exc}", {}
                )
            continue
        adopt(into, pm)
        with contextlib.suppress(TemporaryError):
            await st.board.event(
                "db-restore-restarted",
                cfg.name,
                f"{cfg.site}: restored instance {into} started again at {made['address']}",
                {"into": into, "address": made["address"], "pid": pm.pid},
            )
    return problems


async def drop_restore(st: BackupPort, into: str, pm: Postmaster | None) -> dict[str, Any]:
    """Stop and remove a restored instance (``pm``: its postmaster, when it runs here)."""
    known = _known_restores(st.cfg)
    if pm is None and into not in known:
        raise AlwaysonError(f"no restore named {into!r} here")
    if pm is not None:
        await pm.stop("fast")
    made = known.pop(into, None)
    _save_restores(st.cfg, known)
    folder = Path(made["path"]) if made else restore_folder(st.cfg, into)
    await asyncio.to_thread(shutil.rmtree, folder.parent, True)
    return {"dropped": into}
