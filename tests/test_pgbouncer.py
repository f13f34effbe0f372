"""Behind PgBouncer in transaction mode (Neon's pooled endpoint works the same way), prepared
statements must not be cached per connection. With the cache off, each statement runs in
autocommit (no BEGIN/COMMIT around it) and concurrent load through a pool of 8 server
connections is clean: asyncpg's Parse/Describe/Flush and Bind/Execute/Sync stay on one server
connection, because PgBouncer only lets go of it at the Sync."""

from __future__ import annotations

import asyncio

import pytest

from backend.config import Settings
from backend.main import create_app
from tests.conftest import SECRET, app_client, bearer


async def _hammer(pgbouncer: str, statement_cache: bool) -> list[int]:
    settings = Settings(
        _env_file=None,
        database_url=pgbouncer,
        better_auth_secret=SECRET,
        db_statement_cache=statement_cache,
        db_pool_size=20,
        admission_max_concurrency=0,  # a burst on a busy host is not what this is about
    )
    user = f"bouncer-{statement_cache}"
    async with app_client(create_app(settings), raise_app_exceptions=False) as client:

        async def one(i: int) -> int:
            path = f"/api/{user}/tasks"
            created = await client.post(path, headers=bearer(user), json={"title": f"t{i}"})
            listed = await client.get(path, headers=bearer(user))
            return max(created.status_code, listed.status_code)

        statuses: list[int] = []
        for _ in range(4):
            statuses += await asyncio.gather(*(one(i) for i in range(40)))
        return statuses


@pytest.fixture
def bouncer(pgbouncer: str, clean_tables: None) -> str:
    return pgbouncer


async def test_cache_off_is_clean_under_concurrency(bouncer: str) -> None:
    statuses = await _hammer(bouncer, statement_cache=False)
    assert set(statuses) == {201}


async def test_cache_on_breaks_behind_a_transaction_pooler(bouncer: str) -> None:
    # The reason DB_STATEMENT_CACHE exists: same load, cache on, prepared statements collide.
    statuses = await _hammer(bouncer, statement_cache=True)
    assert 500 in statuses
