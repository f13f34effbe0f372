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
from backend.database_url import normalise_url
from backend.db import Database, Sql, Trouble, backoff, database_trouble
from backend.models import tasks
from tests.conftest import SECRET, UNREACHABLE_DATABASE


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


def _wrapped(error: BaseException, depth: int = 1) -> BaseException:
    for _ in range(depth):
        outer: BaseException = asyncpg.InterfaceError("wrapper")
        outer.__cause__ = error
        error = outer
    return error


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


def test_the_cause_chain_is_searched_five_deep_and_a_cycle_ends() -> None:
    assert database_trouble(_wrapped(ConnectionResetError(), depth=4)) is Trouble.UNREACHABLE
    assert database_trouble(_wrapped(ConnectionResetError(), depth=5)) is None
    looped = asyncpg.InterfaceError("wrapper")
    looped.__context__ = looped
    assert database_trouble(looped) is None


def test_retries_back_off_doubling_up_to_a_second() -> None:
    assert list(itertools.islice(backoff(), 8)) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


async def test_the_pool_is_built_from_the_settings(
    direct_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    knobs = {
        "db_pool_size": 2,
        "db_pool_timeout_seconds": 0.2,
        "db_command_timeout_seconds": 0.3,
        "idempotency_wait_seconds": 0.1,  # must be below the command timeout
        "db_statement_cache": False,
    }
    settings = Settings(_env_file=None, better_auth_secret=SECRET, **knobs)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="backend.db"):
        database = await Database.open(settings, direct_database_url)
    try:
        assert [r.getMessage() for r in caplog.records if r.name == "backend.db"] == [
            f"database TLS: {normalise_url(direct_database_url).tls}"
        ]
        assert database.pool.get_max_size() == 2
        async with database.connection() as connection:
            assert await connection.fetchval("SHOW application_name") == "todo-api"
            # DB_STATEMENT_CACHE=false: nothing stays prepared on the server (as a
            # transaction-mode pooler needs), though the same statement ran twice.
            await connection.fetchval("SELECT $1::int", 1)
            await connection.fetchval("SELECT $1::int", 1)
            assert await connection.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
            # Session state outlives a release: no reset query per request (see _keep_session).
            await connection.execute("SET work_mem = '7MB'")
            backend_pid = connection.get_server_pid()
        async with database.connection() as first, database.connection() as second:
            kept = first if first.get_server_pid() == backend_pid else second
            assert await kept.fetchval("SHOW work_mem") == "7MB"
            started = time.monotonic()
            with pytest.raises(TimeoutError):  # DB_COMMAND_TIMEOUT_SECONDS
                await kept.fetchval("SELECT pg_sleep(5)")
            assert time.monotonic() - started < 2

            async def a_third() -> None:
                async with database.connection():
                    pass

            started = time.monotonic()
            with pytest.raises(TimeoutError):  # DB_POOL_TIMEOUT_SECONDS: both are taken
                await asyncio.wait_for(a_third(), timeout=3)
            assert 0.15 < time.monotonic() - started < 2
    finally:
        await database.close()


async def test_a_server_that_never_answers_times_out_the_connect() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the startup message and never replies
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql://u:p@127.0.0.1:{port}/app"
    knobs = {"db_connect_timeout_seconds": 0.3, "db_connect_budget_seconds": 0}
    settings = Settings(_env_file=None, better_auth_secret=SECRET, **knobs)  # type: ignore[arg-type]
    database = await Database.open(settings, url)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(database.fetch(Sql.of(select(tasks.c.id)), {}), timeout=5)
        assert time.monotonic() - started < 2  # the connect's own timeout, not wait_for's
    finally:
        await database.close()
        server.close()
        await server.wait_closed()


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
