"""The request path's database: statements compiled once, outages told from bugs, connections
handed out in arrival order, and retries while the server is unreachable."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time

import asyncpg
import pytest
from sqlalchemy import bindparam, select

from backend.config import Settings
from backend.db import Database, Sql, Trouble, database_trouble
from backend.models import tasks
from tests.conftest import UNREACHABLE_DATABASE


def test_compiled_statements_keep_their_literal_values() -> None:
    statement = (
        select(tasks.c.id).where(tasks.c.user_id == bindparam("owner")).order_by(tasks.c.id)
    ).limit(1000)
    sql = Sql.of(statement)
    assert "$1" in sql.sql
    assert "$2" in sql.sql
    assert sql.args({"owner": "u1"}) == ["u1", 1000]
    with pytest.raises(KeyError):
        sql.args({})


def _wrapped(error: BaseException) -> BaseException:
    outer: BaseException = asyncpg.InterfaceError("wrapper")
    outer.__cause__ = error
    return outer


@pytest.mark.parametrize(
    ("error", "trouble"),
    [
        (ConnectionRefusedError(), Trouble.UNREACHABLE),
        (TimeoutError(), Trouble.UNREACHABLE),
        (asyncpg.CannotConnectNowError("starting up"), Trouble.UNREACHABLE),
        (asyncpg.ConnectionDoesNotExistError("closed mid-operation"), Trouble.UNREACHABLE),
        (asyncpg.InterfaceError("connection is closed"), Trouble.UNREACHABLE),
        (_wrapped(ConnectionResetError()), Trouble.UNREACHABLE),
        (asyncpg.LockNotAvailableError("lock timeout"), Trouble.BUSY),
        (asyncpg.QueryCanceledError("statement timeout"), Trouble.BUSY),
        (asyncpg.DeadlockDetectedError("deadlock detected"), Trouble.BUSY),
        (asyncpg.SerializationError("could not serialize"), Trouble.BUSY),
        (asyncpg.InvalidPasswordError("password authentication failed"), Trouble.REFUSED),
        (asyncpg.InvalidAuthorizationSpecificationError("no such role"), Trouble.REFUSED),
        (asyncpg.InvalidCatalogNameError("no such database"), Trouble.REFUSED),
        (asyncpg.InsufficientPrivilegeError("permission denied for table"), Trouble.REFUSED),
        (
            asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
            None,
        ),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (ValueError("bug"), None),
    ],
)
def test_trouble_or_bug(error: BaseException, trouble: Trouble | None) -> None:
    assert database_trouble(error) is trouble


async def test_connections_are_handed_out_in_arrival_order(settings: Settings) -> None:
    # 32 requests in a closed loop share 2 connections. Each does some "framework work" in
    # steps (as parsing and verifying do) before asking for a connection, so at any release
    # some other request is already on the event loop's ready queue. asyncpg's queue lets such
    # a newcomer take the connection ahead of the waiter it just woke, which goes to the back:
    # a long tail. Counted here: connections given to a request while an earlier one waited.
    database_url = settings.database_url
    assert database_url is not None
    database = await Database.open(settings.model_copy(update={"db_pool_size": 2}), database_url)

    async def hold_one() -> None:
        async with database.connection():
            await asyncio.sleep(0.05)

    # Both connections open first: two requests let in together may finish *connecting* in
    # either order, which is not what this test is about.
    await asyncio.gather(hold_one(), hold_one())
    tickets = itertools.count()
    waiting: set[int] = set()
    overtakes = served = 0
    stop_at = asyncio.get_running_loop().time() + 0.5

    async def request_loop(seed: int) -> None:
        nonlocal overtakes, served
        steps = random.Random(seed)  # noqa: S311 (scheduling jitter, not cryptography)
        while asyncio.get_running_loop().time() < stop_at:
            for _ in range(steps.randint(1, 20)):
                await asyncio.sleep(0)
            ticket = next(tickets)
            waiting.add(ticket)
            async with database.connection() as connection:
                waiting.discard(ticket)
                served += 1
                overtakes += any(earlier < ticket for earlier in waiting)
                await connection.fetchval("SELECT 1")

    try:
        await asyncio.gather(*(request_loop(seed) for seed in range(32)))
    finally:
        await database.close()
    assert served > 100
    assert overtakes == 0


async def test_an_unreachable_database_is_retried_with_backoff_within_the_budget(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    budget = {"db_connect_budget_seconds": 0.6, "database_url": UNREACHABLE_DATABASE}
    database = await Database.open(settings.model_copy(update=budget), UNREACHABLE_DATABASE)
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.INFO, logger="backend.db"),
            pytest.raises(ConnectionRefusedError),
        ):
            await database.fetch(Sql.of(select(tasks.c.id)), {})
    finally:
        await database.close()
    # 0.05 + 0.1 + 0.2 s of waits fit in 0.6 s; the next one (0.4 s) would not: then it gives up.
    assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()] == [
        f"database unreachable (ConnectionRefusedError); retry in {delay} s"
        for delay in ("0.05", "0.10", "0.20")
    ]
    assert 0.35 <= time.monotonic() - started < 0.6
