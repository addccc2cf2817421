"""A site's backup repository: its files, retention, mirroring to the other site.

``data/<db>/<site>/repo`` holds ``base/<id>/`` (a plain ``pg_basebackup`` with its
manifest and ``alwayson-backup.json``) and ``wal/`` (every segment, archived by
PostgreSQL's ``archive_command`` with ``archive_mode = always``, so the standby's site
archives what it receives too). :func:`mirror` copies what one site has and the other
lacks, only while the site link between them is up; every site applies retention
(:func:`retain`) to its own repository, so both keep the same backups.

:class:`BackupPort` is all that backups and restores need from a site's steward: they
read through it and return what they made; they never change the steward's state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from alwayson.data.board import Board
from alwayson.data.engines import Engine, Identity, query
from alwayson.data.layout import DatabaseConfig
from alwayson.util.clocks import Clock
from alwayson.util.errors import AlwaysonError
from alwayson.util.sitelinks import Partitions

RECORD = "alwayson-backup.json"
ARCHIVE_WAIT = 60.0
ARCHIVE_POLL = 0.1


class BackupPort(Protocol):
    """What a backup, a verification or a restore reads from its site's steward."""

    @property
    def cfg(self) -> DatabaseConfig: ...

    @property
    def name(self) -> str: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def board(self) -> Board: ...

    @property
    def log_dir(self) -> Path: ...

    @property
    def clock(self) -> Clock: ...

    def admin_dsn(self, address: str | None = None, dbname: str = "postgres") -> str: ...


def repo_of(cfg: DatabaseConfig) -> Path:
    return Path(cfg.repo_dir)


def list_backups(cfg: DatabaseConfig) -> list[dict[str, Any]]:
    return records(repo_of(cfg))


def records(repo: Path) -> list[dict[str, Any]]:
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


def dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def own_tree(ident: Identity, root: Path) -> None:
    """Give ``root`` (a file or a folder and all below it) to PostgreSQL's user."""
    uid, gid = ident.uid, ident.gid
    if uid is None or gid is None:
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / RECORD)


def retain(cfg: DatabaseConfig, now: float) -> list[dict[str, Any]]:
    """Apply retention to this site's repository: remove the base backups :func:`kept`
    leaves out and the WAL older than the oldest kept one needs. Every site does it to
    its own repository (the mirrored copies too), so both converge on the same set."""
    repo = repo_of(cfg)
    found = records(repo)
    keep = kept(cfg, found, now)
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


def mirror(cfg: DatabaseConfig, partitions: Partitions, ident: Identity, now: float) -> int:
    """Copy to each other site's repository what it lacks, while the link is up: never
    a backup (or WAL) that the destination's retention would remove at once, so a backup
    one site dropped does not come back from the other. Backup records (their
    verification) follow from the site that made the backup. Copies belong to
    PostgreSQL's user: the other site's archiver compares its own segments with them and
    its restores read them."""
    copied = 0
    repo = repo_of(cfg)
    for peer, other in cfg.peer_repos.items():
        if not partitions.connected(cfg.site, peer):
            continue
        other_repo = Path(other)
        if not other_repo.exists():
            continue
        theirs = records(other_repo)
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
                if record.get("site") == cfg.site and read_text_or_none(dest / RECORD) != text:
                    write_record(dest, record)
                continue
            ids = {b["id"] for b in kept(cfg, sorted([*theirs, record], key=record_id), now)}
            if record["id"] not in ids:
                continue
            if copy_in(functools.partial(shutil.copytree, item), dest, ident):
                copied += 1
            theirs = sorted([*theirs, record], key=record_id)
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
            if copy_in(functools.partial(shutil.copy2, item), dest, ident):
                copied += 1
    return copied


def copy_in(copy: Callable[[Path], object], dest: Path, ident: Identity) -> bool:
    """Copy into a private temporary name, then rename: another site's agent copying the
    same item at the same moment, or a crash halfway, never leaves a partial ``dest``."""
    tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    try:
        copy(tmp)
        own_tree(ident, tmp)
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


def record_id(record: dict[str, Any]) -> str:
    return str(record["id"])


def read_text_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


async def wait_archived(st: BackupPort, lsn: str) -> None:
    """Switch to a new WAL file and wait until the one holding ``lsn`` is archived."""
    rows = await query(st.admin_dsn(), "SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))
    segment = rows[0][0]
    await query(st.admin_dsn(), "SELECT pg_switch_wal()")
    deadline = st.clock.monotonic() + ARCHIVE_WAIT
    while not (repo_of(st.cfg) / "wal" / segment).exists():
        if st.clock.monotonic() > deadline:
            raise AlwaysonError(
                f"WAL segment {segment} was not archived within {ARCHIVE_WAIT:.0f}s"
            )
        await st.clock.sleep(ARCHIVE_POLL)
