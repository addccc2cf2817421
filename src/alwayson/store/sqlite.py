"""SQLite (WAL) ``StateStore``: the embedded default, one file in the state directory.

All statements run on one dedicated thread so the event loop never blocks on disk and the
single connection is never shared across threads. SQLite serialises writers, and
``compare_and_set`` runs inside ``BEGIN IMMEDIATE`` so it is atomic across processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alwayson.store.base import AuditEntry, Event, Versioned
from alwayson.util.errors import TemporaryError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
    subject TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
"""


class SQLiteStore:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> SQLiteStore:
        await self._run(self._connect)
        return self

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # The spec (with its secrets) and the audit live here: 0600 before SQLite opens it,
        # so its -wal and -shm files, which SQLite makes with the database's mode, are too.
        try:
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self._path}{suffix}", 0o600)
        except OSError as exc:  # as SQLite would fail on it: temporary, with the path
            raise sqlite3.OperationalError(f"cannot open {self._path}: {exc}") from exc
        conn = sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SQLiteStore.open() was not awaited")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.OperationalError as exc:
            raise TemporaryError(f"state store {self._path}: {exc}", retry_after=0.5) from exc

    async def get(self, key: str) -> Versioned | None:
        def read() -> Versioned | None:
            row = self._db.execute("SELECT value, version FROM kv WHERE key=?", (key,)).fetchone()
            return None if row is None else Versioned(json.loads(row[0]), int(row[1]))

        return await self._run(read)

    async def put(self, key: str, value: dict[str, Any]) -> int:
        text = json.dumps(value)

        def write() -> int:
            row = self._db.execute(
                "INSERT INTO kv(key, value, version) VALUES(?, ?, 1) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, version=kv.version+1 "
                "RETURNING version",
                (key, text),
            ).fetchone()
            return int(row[0])

        return await self._run(write)

    async def compare_and_set(
        self, key: str, expected_version: int | None, value: dict[str, Any]
    ) -> bool:
        text = json.dumps(value)

        def cas() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT version FROM kv WHERE key=?", (key,)).fetchone()
                current = None if row is None else int(row[0])
                if current != expected_version:
                    db.execute("ROLLBACK")
                    return False
                if current is None:
                    db.execute("INSERT INTO kv(key, value, version) VALUES(?, ?, 1)", (key, text))
                else:
                    db.execute("UPDATE kv SET value=?, version=version+1 WHERE key=?", (text, key))
                db.execute("COMMIT")
                return True
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(cas)

    async def list_prefix(self, prefix: str, limit: int = 1000) -> list[tuple[str, Versioned]]:
        def read() -> list[tuple[str, Versioned]]:
            rows = self._db.execute(
                "SELECT key, value, version FROM kv WHERE substr(key, 1, ?) = ? "
                "ORDER BY key LIMIT ?",
                (len(prefix), prefix, limit),
            ).fetchall()
            return [(str(r[0]), Versioned(json.loads(r[1]), int(r[2]))) for r in rows]

        return await self._run(read)

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._db.execute("DELETE FROM kv WHERE key=?", (key,)))

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._run(
            lambda: self._db.execute(
                "INSERT INTO audit(at, actor, action, detail) VALUES(?, ?, ?, ?)",
                (entry.at, entry.actor, entry.action, json.dumps(entry.detail)),
            )
        )

    async def list_audit(self, limit: int = 100) -> list[AuditEntry]:
        def read() -> list[AuditEntry]:
            rows = self._db.execute(
                "SELECT id, at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [AuditEntry(r[1], r[2], r[3], json.loads(r[4]), r[0]) for r in rows]

        return await self._run(read)

    async def append_event(self, event: Event) -> None:
        await self._run(
            lambda: self._db.execute(
                "INSERT INTO events(at, kind, subject, message, data) VALUES(?, ?, ?, ?, ?)",
                (event.at, event.kind, event.subject, event.message, json.dumps(event.data)),
            )
        )

    async def list_events(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        def read() -> list[Event]:
            if kind is None:
                rows = self._db.execute(
                    "SELECT id, at, kind, subject, message, data FROM events "
                    "ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, at, kind, subject, message, data FROM events WHERE kind=? "
                    "ORDER BY id DESC LIMIT ?",
                    (kind, limit),
                ).fetchall()
            return [Event(r[1], r[2], r[3], r[4], json.loads(r[5]), r[0]) for r in rows]

        return await self._run(read)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
