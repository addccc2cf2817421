"""PostgreSQL for customers, accounts and ledger when the platform gives them ``DATABASE_URL``.

Without ``DATABASE_URL`` nothing here is imported beyond this module (psycopg is loaded only
when a database is configured) and the services keep their in-memory tables.

The URL leads to a per-site endpoint that always reaches the current primary. During a
failover that endpoint closes connections and holds or refuses new ones for a few seconds,
so this module:

- keeps a small pool of ``psycopg.AsyncConnection`` (``BANK_DB_POOL``, default 4) and throws
  away any connection that broke, was closed, or is not idle after a request;
- connects with ``connect_timeout=3`` and sets ``statement_timeout`` and ``lock_timeout``
  on the session; each attempt also has a client-side deadline (``BANK_DB_TIMEOUT``);
- runs each request's work in ONE transaction; if the connection fails before COMMIT was
  sent (nothing can have been written), the work is retried once on a fresh connection, and
  a deadlock or serialization failure is retried up to three times;
- answers ``503 {"error": ..., "database": "unreachable"}`` when the database cannot be
  reached, and ``503 {..., "outcome": "unknown"}`` when the connection was lost during COMMIT
  (the write may or may not have been committed: never a 200 for a write not known to be
  committed).

The schema (all three services' tables, so any of them can start first) is created with
``CREATE TABLE IF NOT EXISTS`` in one transaction that holds ``pg_advisory_xact_lock``, so
two instances starting together do not race. It is attempted in the background at startup
and again before the first query if that failed (the database may be down when the service
starts: the service still starts and reports ready; ``/healthz`` never touches the database).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from bank.web import App, HTTPError, Request, Response, json_response

if TYPE_CHECKING:
    from psycopg import AsyncConnection, AsyncCursor

T = TypeVar("T")
Work = Callable[["AsyncCursor[dict[str, Any]]"], Awaitable[T]]

SCHEMA_LOCK = (7300, 1)  # pg_advisory_xact_lock(int, int) key of the schema
UNCONFIRMED = {
    "database": "unconfirmed",
    "outcome": "unknown",
    "detail": "the write may be committed on the primary but is not known to be replicated; "
    "retry with the same key, or check, before writing again",
}
ACCOUNT_LOCKS = 7301  # pg_advisory_xact_lock(7301, hashtext(customer_id)): one opener at once

# One schema for the three services (they share one database): any of them may create it.
# Money is a bigint in the currency's minor unit. Balances are credit-normal: credits are
# positive, debits negative, so the balances of all accounts (customer and bank) sum to 0
# in every currency, and each entry's rows sum to 0.
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS customers (
        id            text PRIMARY KEY,
        name          text NOT NULL,
        email         text NOT NULL,
        id_number     text NOT NULL,
        city          text NOT NULL,
        phone         text,
        kyc_check_id  text,
        status        text NOT NULL DEFAULT 'active',
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz,
        CONSTRAINT customers_email_key UNIQUE (email),
        CONSTRAINT customers_id_number_key UNIQUE (id_number)
    )
    """,
    "CREATE INDEX IF NOT EXISTS customers_created_idx ON customers (created_at)",
    """
    CREATE TABLE IF NOT EXISTS accounts (
        id           text PRIMARY KEY,
        kind         text NOT NULL DEFAULT 'customer' CHECK (kind IN ('customer', 'bank')),
        customer_id  text,
        number       text,
        product      text,
        currency     text NOT NULL,
        status       text NOT NULL DEFAULT 'active',
        balance      bigint NOT NULL DEFAULT 0,
        opened_at    timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT accounts_number_key UNIQUE (number),
        CONSTRAINT accounts_no_overdraft CHECK (kind = 'bank' OR balance >= 0),
        CONSTRAINT accounts_customer_fields CHECK (
            kind = 'bank' OR (customer_id IS NOT NULL AND number IS NOT NULL)
        )
    )
    """,
    "CREATE INDEX IF NOT EXISTS accounts_customer_idx ON accounts (customer_id, opened_at)",
    """
    CREATE TABLE IF NOT EXISTS ledger_entries (
        id           bigserial PRIMARY KEY,
        entry_id     text NOT NULL,
        line         smallint NOT NULL,
        account_id   text NOT NULL REFERENCES accounts (id),
        currency     text NOT NULL,
        amount       bigint NOT NULL CHECK (amount <> 0),
        description  text NOT NULL DEFAULT '',
        created_at   timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT ledger_entries_line_key UNIQUE (entry_id, line)
    )
    """,
    "CREATE INDEX IF NOT EXISTS ledger_entries_account_idx"
    " ON ledger_entries (account_id, created_at)",
)


def iso(value: Any) -> str | None:
    """A ``timestamptz`` as the bank's ISO form (``2025-01-31T07:00:00.123Z``)."""
    if value is None:
        return None
    from bank.store import now_iso

    return now_iso(value.timestamp())


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Database:
    """A small pool of async connections to ``url`` and a transaction runner with retries."""

    def __init__(self, app: App, url: str) -> None:
        self.app = app
        self.url = url
        self.size = max(1, int(_env_float("BANK_DB_POOL", 4)))
        self.connect_timeout = 3
        self.statement_timeout_ms = int(_env_float("BANK_DB_STATEMENT_TIMEOUT", 5.0) * 1000)
        self.attempt_timeout = _env_float("BANK_DB_TIMEOUT", 8.0)  # client-side, per attempt
        self.pool_wait = _env_float("BANK_DB_POOL_WAIT", 5.0)
        self.schema_ready = False
        self.reachable: bool | None = None  # None: not tried yet
        self.last_error = ""
        self._idle: list[AsyncConnection[Any]] = []
        self._open = 0
        self._slots: asyncio.Semaphore | None = None
        self._schema_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._notices: dict[int, list[str]] = {}  # id(connection) -> warnings received

    # ------------------------------------------------------------------ connections

    async def _connect(self) -> AsyncConnection[Any]:
        import psycopg

        options = (
            f"-c statement_timeout={self.statement_timeout_ms}"
            f" -c lock_timeout={min(self.statement_timeout_ms, 3000)}"
            " -c idle_in_transaction_session_timeout=15000"
        )
        conn = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,  # transactions are explicit: conn.transaction()
            connect_timeout=self.connect_timeout,
            application_name=self.app.instance[:63],
            options=options,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=10_000,  # ms: give up on a peer that stopped acknowledging
        )
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        self._notices[id(conn)] = notices
        self._open += 1
        return conn

    def _discard(self, conn: AsyncConnection[Any]) -> None:
        if not conn.closed:
            conn.pgconn.finish()  # no I/O wait: the connection may be half-dead
        self._notices.pop(id(conn), None)
        self._open -= 1

    def _put_back(self, conn: AsyncConnection[Any]) -> None:
        from psycopg.pq import TransactionStatus

        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            self._discard(conn)
        else:
            self._idle.append(conn)

    async def _acquire(self) -> tuple[AsyncConnection[Any], bool]:
        """(connection, fresh): an idle pooled one if any, else a new one."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, False
            self._discard(conn)
        try:
            conn = await self._connect()
        except Exception as exc:
            self._note_failure(exc)
            raise self.unreachable(exc) from None
        return conn, True

    async def close(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())

    # ------------------------------------------------------------------ state and errors

    def unreachable(self, exc: BaseException | str, **details: Any) -> HTTPError:
        reason = exc if isinstance(exc, str) else _describe(exc)
        return HTTPError(
            503, "database unreachable", database="unreachable", reason=reason, **details
        )

    def _note_failure(self, exc: BaseException) -> None:
        self.last_error = _describe(exc)
        if self.reachable is not False:
            self.app.log(f"database unreachable: {self.last_error}")
        self.reachable = False

    def _note_success(self) -> None:
        if self.reachable is False:
            self.app.log("database reachable again")
        self.reachable = True

    # ------------------------------------------------------------------ schema

    async def _ensure_schema(self, conn: AsyncConnection[Any]) -> None:
        if self.schema_ready:
            return
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self.schema_ready:
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", SCHEMA_LOCK)
                for statement in SCHEMA:
                    await conn.execute(statement)
            self.schema_ready = True
            self.app.log("database schema ready")

    def start(self) -> None:
        """At startup: create the schema in the background (never delays readiness)."""
        task = asyncio.get_running_loop().create_task(self._warm_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warm_up(self) -> None:
        try:
            await self.run(_noop)
        except HTTPError as exc:
            self.app.log(f"schema not created at startup (will retry on first use): {exc}")

    # ------------------------------------------------------------------ transactions

    async def run(self, work: Work[T]) -> T:
        """Run ``work(cursor)`` in one transaction; map database trouble to a 503.

        ``work`` may raise :class:`HTTPError` (rolled back, passed on) and may be called
        more than once (each failed attempt was rolled back). Constraint violations
        (``psycopg.errors.IntegrityError``) are passed on for the caller to explain.
        """
        import psycopg
        from psycopg.rows import dict_row

        errors = psycopg.errors
        retryable = (
            errors.DeadlockDetected,
            errors.SerializationFailure,
            errors.TransactionRollback,
        )
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.pool_wait)
        except TimeoutError:
            raise HTTPError(
                503, "database busy: no free connection", database="busy", pool=self.size
            ) from None
        try:
            attempt = 0
            while True:
                attempt += 1
                conn, fresh = await self._acquire()
                committing = False
                try:
                    async with asyncio.timeout(self.attempt_timeout):
                        await self._ensure_schema(conn)
                        notices = self._notices.setdefault(id(conn), [])
                        async with conn.transaction():
                            async with conn.cursor(row_factory=dict_row) as cur:
                                result = await work(cur)
                            committing = True  # leaving the block sends COMMIT
                            notices.clear()
                except (HTTPError, psycopg.errors.IntegrityError):
                    self._put_back(conn)  # rolled back; the connection is still good
                    self._note_success()
                    raise
                except retryable as exc:  # deadlock, serialization failure: try again
                    self._put_back(conn)
                    if attempt < 4:
                        continue
                    raise HTTPError(
                        503, "database busy: transaction aborted", reason=str(exc)
                    ) from None
                except (TimeoutError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    broken = conn.closed or isinstance(exc, TimeoutError) or _fatal(exc)
                    if broken:
                        self._discard(conn)
                    else:
                        self._put_back(conn)  # e.g. statement_timeout: the session survives
                    if committing and isinstance(exc, TimeoutError):
                        # COMMIT waited too long, e.g. for a synchronous standby that is gone
                        # (statement_timeout does not cover that wait). It may commit later.
                        raise HTTPError(
                            503, "commit not confirmed in time", **UNCONFIRMED
                        ) from None
                    if committing:
                        self._note_failure(exc)
                        raise self.unreachable(
                            exc,
                            outcome="unknown",
                            detail="the connection was lost during COMMIT: the write may or "
                            "may not have been committed; retry with the same key, or check",
                        ) from None
                    if broken and not fresh and attempt < 6:
                        # A pooled connection the server (or a failover) closed while it was
                        # idle: the others are most likely gone too. Nothing was written:
                        # go again on a new connection.
                        await self.close()
                        continue
                    if not broken:  # statement or lock timeout: the server is there but slow
                        raise HTTPError(
                            503, "database timeout", database="timeout", reason=_describe(exc)
                        ) from None
                    self._note_failure(exc)
                    raise self.unreachable(exc) from None
                except psycopg.errors.ReadOnlySqlTransaction as exc:
                    # A demoted primary behind a stale connection: never write there.
                    self._discard(conn)
                    if not fresh and attempt < 6:
                        await self.close()
                        continue
                    raise self.unreachable(exc) from None
                except BaseException:
                    self._discard(conn)
                    raise
                self._put_back(conn)
                self._note_success()
                if any("synchronous replication" in notice for notice in notices):
                    # statement_timeout cut COMMIT's wait for the synchronous standby: it is
                    # committed here, but not known to be on the standby. Not acknowledged.
                    raise HTTPError(
                        503, "commit not confirmed by the synchronous standby", **UNCONFIRMED
                    )
                return result
        finally:
            self._slots.release()

    async def run_again_on_conflict(self, work: Work[T], attempts: int = 3) -> T:
        """:meth:`run`, again after a unique violation: a concurrent transaction committed the
        same key first, and ``work``'s own checks see it on the next attempt (a 409, a replay).
        """
        from psycopg.errors import UniqueViolation

        for _ in range(attempts - 1):
            try:
                return await self.run(work)
            except UniqueViolation:
                continue
        try:
            return await self.run(work)
        except UniqueViolation as exc:
            constraint = exc.diag.constraint_name or "unique"
            raise HTTPError(
                409, "conflict with a concurrent write", constraint=constraint
            ) from None

    # ------------------------------------------------------------------ status

    async def status(self, request: Request) -> Response:
        """``GET /<service>/db``: 200 ``{"database": "ok"}`` or 503 ``"unreachable"``."""
        started = time.perf_counter()

        async def probe(cur: AsyncCursor[dict[str, Any]]) -> dict[str, Any]:
            await cur.execute(
                "SELECT pg_is_in_recovery() AS in_recovery,"
                " current_setting('server_version') AS server_version"
            )
            row = await cur.fetchone()
            return dict(row or {})

        pool = {"size": self.size, "open": self._open, "idle": len(self._idle)}
        try:
            info = await self.run(probe)
        except HTTPError as exc:
            body = {"database": "unreachable", "error": exc.message, **exc.details}
            body.update(service=self.app.service, instance=self.app.instance, pool=pool)
            return json_response(body, 503)
        return json_response(
            {
                "database": "ok",
                "service": self.app.service,
                "instance": self.app.instance,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "schema_ready": self.schema_ready,
                "pool": {"size": self.size, "open": self._open, "idle": len(self._idle)},
                **info,
            }
        )


async def _noop(cur: AsyncCursor[dict[str, Any]]) -> None:
    return None


def _fatal(exc: BaseException) -> bool:
    """True when the session cannot be reused (connection lost, server shutting down)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return not sqlstate or sqlstate.startswith(("08", "57P"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def setup(app: App, status_path: str) -> Database | None:
    """The app's database if ``DATABASE_URL`` is set (and ``GET status_path``), else None.

    Call right after creating the app, before registering ``/<service>/{id}`` routes, so the
    status route wins over them.
    """
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        return None
    database = Database(app, url)
    app.get(status_path)(database.status)
    app.on_startup.append(_starter(database))
    app.on_shutdown.append(database.close)
    return database


def _starter(database: Database) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        database.start()

    return start
