"""PostgreSQL itself: finding the binaries, running its tools as an unprivileged user, and
the postmaster as a child of the site agent.

The postmaster is started with a *parent-death signal* (SIGQUIT, PostgreSQL's immediate
shutdown): if the agent that keeps its lease dies, the kernel stops the primary with it,
so no primary can outlive the process that is supposed to fence it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.sql import SQL, Composed

from alwayson.util.addresses import split_hostport
from alwayson.util.clocks import Clock, SystemClock
from alwayson.util.credentials import write_private
from alwayson.util.errors import PermanentError, TemporaryError

TOOLS = (
    "initdb",
    "postgres",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_verifybackup",
    "pg_controldata",
    "pg_archivecleanup",
    "psql",
    "pgbench",
)
EXIT_POLL = 0.02
BACKENDS_POLL = 0.05
PR_SET_PDEATHSIG = 1


class EngineError(PermanentError):
    """A PostgreSQL tool failed; the message carries its output."""


def default_bin_dir() -> Path | None:
    """The pgserver wheel's binaries, found without importing it (its import has side
    effects we do not need)."""
    found = importlib.util.find_spec("pgserver")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / "pginstall" / "bin"


def find_binaries(bin_dir: str | None) -> Path:
    folder = Path(bin_dir) if bin_dir else default_bin_dir()
    where = f"bin_dir {bin_dir}" if bin_dir else "the pgserver wheel"
    if folder is None:
        raise EngineError(
            "PostgreSQL binaries not found: the pgserver wheel is not installed. Install it "
            "(pip install pgserver) or set databases[].bin_dir to a folder holding initdb, "
            "postgres, pg_ctl, pg_basebackup and pg_rewind"
        )
    missing = [t for t in TOOLS if not (folder / t).exists()]
    if missing:
        raise EngineError(
            f"PostgreSQL binaries missing in {folder} ({where}): {', '.join(missing)}; "
            "install the pgserver wheel (pip install pgserver) or point databases[].bin_dir "
            "at a PostgreSQL 13+ bin folder"
        )
    return folder


@dataclass(frozen=True)
class Identity:
    """Who PostgreSQL runs as: an unprivileged user when the agent is root."""

    user: str | None
    uid: int | None
    gid: int | None
    home: str

    @classmethod
    def of(cls, user: str | None) -> Identity:
        if os.geteuid() != 0:
            return cls(None, None, None, os.environ.get("HOME", "/tmp"))
        name = user or "nobody"
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise EngineError(
                f"user {name!r} (runtime.user) does not exist; PostgreSQL refuses to run as "
                "root, so create an unprivileged user or set runtime.user"
            ) from exc
        return cls(name, entry.pw_uid, entry.pw_gid, "/tmp")

    def own(self, path: Path) -> None:
        """Make ``path`` (created if needed) belong to the PostgreSQL user, mode 0700."""
        path.mkdir(parents=True, exist_ok=True)
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)
        path.chmod(0o700)

    def check_reachable(self, path: Path) -> None:
        """Every parent of ``path`` must let the PostgreSQL user through."""
        if self.uid is None:
            return
        for parent in reversed(path.parents):
            mode = parent.stat().st_mode if parent.exists() else 0o755
            if parent.exists() and not mode & 0o001:
                raise EngineError(
                    f"{parent} is not searchable by user {self.user!r} (mode {oct(mode)[-3:]}); "
                    f"PostgreSQL runs as {self.user!r} and needs to reach {path}. Put the state "
                    "directory somewhere it can reach, or chmod o+x the folder"
                )


def write_passfile(path: Path, password: str, ident: Identity) -> None:
    """libpq's password file with the superuser's password: 0600, PostgreSQL's identity's
    (libpq ignores a passfile others can read)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    owner = (ident.uid, ident.gid) if ident.uid is not None and ident.gid is not None else None
    # The tools connect only as the superuser: any host, port, database and user.
    write_private(path, f"*:*:*:*:{escaped}\n", owner=owner)


class Engine:
    """Runs PostgreSQL's tools for one database in one site."""

    def __init__(
        self,
        bin_dir: Path,
        ident: Identity,
        password: str,
        log_file: Path,
        clock: Clock | None = None,
        passfile: Path | None = None,
    ) -> None:
        self.bin = bin_dir
        self.clock: Clock = clock or SystemClock()
        self.ident = ident
        self.password = password
        self.log_file = log_file
        self.passfile = passfile
        if passfile is not None:
            write_passfile(passfile, password, ident)

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The tools' and the server's environment: the superuser's password reaches them
        through a 0600 passfile of PostgreSQL's identity (``PGPASSFILE``), so it is in no
        process's environment (``/proc/<pid>/environ``)."""
        secret = (
            {"PGPASSFILE": str(self.passfile)}
            if self.passfile is not None
            else {"PGPASSWORD": self.password}
        )
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": self.ident.home,
            "LC_ALL": "C",
            **secret,
            "PGCONNECT_TIMEOUT": "3",
        }
        env.update(extra or {})
        return env

    async def run(
        self, tool: str, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(self.bin / tool),
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env(env),
            cwd="/",
            user=self.ident.uid,
            group=self.ident.gid,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EngineError(f"{tool} {' '.join(args)}: no result in {timeout:.0f}s") from None
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        with self.log_file.open("a") as log:
            log.write(f"--- {tool} {' '.join(args)} → {proc.returncode}\n{text}")
        if proc.returncode != 0:
            raise EngineError(f"{tool} failed ({proc.returncode}): {text.strip()[-800:]}")
        return text

    def write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        path.chmod(mode)
        if self.ident.uid is not None and self.ident.gid is not None:
            os.chown(path, self.ident.uid, self.ident.gid)

    async def initdb(self, data_dir: Path, superuser: str) -> None:
        self.ident.own(data_dir)
        pwfile = data_dir.parent / ".pw"
        self.write_file(pwfile, self.password + "\n")
        try:
            await self.run(
                "initdb",
                "-D",
                str(data_dir),
                "-U",
                superuser,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--data-checksums",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    async def controldata(self, data_dir: Path) -> dict[str, str]:
        text = await self.run("pg_controldata", "-D", str(data_dir), timeout=15)
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def spawn(self, data_dir: Path, log_path: Path) -> Postmaster:
        """Start ``postgres -D data_dir`` as the agent's child with a parent-death signal."""
        ident = self.ident

        def die_with_parent() -> None:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)

        out = log_path.open("ab")
        with out:
            popen = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=str(data_dir),
                user=ident.uid,
                group=ident.gid,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        return Postmaster(popen, data_dir, self.clock)


class Postmaster:
    def __init__(self, popen: subprocess.Popen[bytes], data_dir: Path, clock: Clock) -> None:
        self.popen = popen
        self.data_dir = data_dir
        self.clock = clock

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    async def wait(self, timeout: float) -> bool:
        deadline = self.clock.monotonic() + timeout
        while self.alive() and self.clock.monotonic() < deadline:
            await self.clock.sleep(EXIT_POLL)
        return not self.alive()

    async def stop(self, mode: str, timeout: float = 30.0) -> None:
        """``fast`` (SIGINT: a clean shutdown that sends all WAL to the standby) or
        ``immediate`` (SIGQUIT: nothing more commits). SIGKILL after ``timeout``."""
        self.signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        if not await self.wait(timeout):
            self.signal(signal.SIGKILL)
            await self.wait(5.0)
        await wait_backends_gone(self.data_dir, 10.0, self.clock)


async def wait_backends_gone(data_dir: Path, timeout: float, clock: Clock) -> None:
    """After the postmaster died, make sure none of its backends can still commit: every
    PostgreSQL process works in its data directory, so look for those and kill them."""
    deadline = clock.monotonic() + timeout
    target = str(data_dir)
    while True:
        left: list[psutil.Process] = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "postgres" and proc.cwd() == target:
                    left.append(proc)
            except (psutil.Error, OSError):
                continue
        if not left:
            return
        if clock.monotonic() >= deadline:
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            deadline = clock.monotonic() + 5.0
        await clock.sleep(BACKENDS_POLL)


def tool_conninfo(address: str, user: str, dbname: str = "postgres") -> str:
    """A connection string for a PostgreSQL tool's argv: no password (the tool reads the
    engine's passfile), since every process may read another's command line."""
    host, port = split_hostport(address)
    return f"host='{host}' port='{port}' user='{user}' dbname='{dbname}'"


def conninfo(address: str, user: str, password: str, dbname: str = "postgres", **extra: Any) -> str:
    host, port = split_hostport(address)
    parts = {"host": host, "port": port, "user": user, "password": password, "dbname": dbname}
    parts.update(extra)
    return " ".join(f"{k}='{v!s}'" for k, v in parts.items())


async def query(
    dsn: str, sql: str | SQL | Composed, params: tuple[Any, ...] = (), timeout: float = 5.0
) -> list[tuple[Any, ...]]:
    """One statement on a fresh connection (autocommit); TemporaryError when unreachable."""
    try:
        async with await asyncio.wait_for(
            psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=3), timeout
        ) as conn:
            cur = await asyncio.wait_for(conn.execute(sql, params), timeout)
            return await cur.fetchall() if cur.description else []
    except (psycopg.OperationalError, TimeoutError, OSError) as exc:
        raise TemporaryError(f"{exc}".strip() or "no answer in time") from exc


class KeptConnection:
    """One connection kept open for the statements a steward runs every cycle.

    A fresh connection per statement costs PostgreSQL a new backend process and a password
    exchange, four times a second per agent (most of an idle agent's CPU). Any failure
    closes the connection; the next statement opens a new one, so a restarted, stopped or
    promoted server is simply reconnected to. ``dsn`` is asked each time it connects.
    """

    def __init__(self, dsn: Callable[[], str]) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def query(
        self, sql: str | SQL | Composed, params: tuple[Any, ...] = (), timeout: float = 5.0
    ) -> list[tuple[Any, ...]]:
        """Like :func:`query`, on the kept connection."""
        try:
            conn = await self._connected(timeout)
            cur = await asyncio.wait_for(conn.execute(sql, params), timeout)
            return await cur.fetchall() if cur.description else []
        except (psycopg.OperationalError, TimeoutError, OSError) as exc:
            await self.close()
            raise TemporaryError(f"{exc}".strip() or "no answer in time") from exc
        except psycopg.Error:
            await self.close()  # in an unknown state: start the next statement afresh
            raise

    async def _connected(self, timeout: float) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn: psycopg.AsyncConnection[Any] = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.dsn(), autocommit=True, connect_timeout=3),
            timeout,
        )
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


def free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free
