"""Alembic: empty -> head -> base on a fresh database, and the models match the migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from backend.db import EmbeddedPostgres
from tests.conftest import run_alembic


@pytest.fixture
async def fresh_database(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    admin = await asyncpg.connect(postgres.url())
    await admin.execute("DROP DATABASE IF EXISTS migration_check")
    await admin.execute("CREATE DATABASE migration_check")
    try:
        yield postgres.url("migration_check")
    finally:
        await admin.execute("DROP DATABASE migration_check WITH (FORCE)")
        await admin.close()


async def _tables(url: str) -> dict[str, set[str]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
        )
    finally:
        await connection.close()
    tables: dict[str, set[str]] = {}
    for row in rows:
        tables.setdefault(row["tablename"], set()).add(row["indexname"])
    return tables


async def test_upgrade_to_head_and_downgrade_to_base(fresh_database: str) -> None:
    assert await _tables(fresh_database) == {}

    run_alembic(fresh_database, "upgrade", "head")
    tables = await _tables(fresh_database)
    assert set(tables) == {"users", "tasks", "idempotency_keys", "alembic_version"}
    assert "ix_tasks_user_id_id" in tables["tasks"]
    assert tables["idempotency_keys"] == {"pk_idempotency_keys", "ix_idempotency_keys_created_at"}

    run_alembic(fresh_database, "check")  # models and migrations agree: nothing to autogenerate

    run_alembic(fresh_database, "downgrade", "base")
    assert set(await _tables(fresh_database)) <= {"alembic_version"}
