"""Database URLs as hosts hand them out (Neon's included) become asyncpg-ready targets."""

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
from backend.db import Database, DatabaseTarget, Sql, is_database_outage, normalise_url
from backend.models import tasks

NEON_POOLED = (
    "postgresql://alex:pw@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech/neondb"
    "?sslmode=require&channel_binding=require"
)
NEON_DIRECT = NEON_POOLED.replace("-pooler", "")


VERIFIED = "verified: server certificate and host name checked against the system trust store"
UNVERIFIED = "sslmode=require (encrypted; the server certificate is NOT verified)"


@pytest.mark.parametrize(
    ("raw", "url", "tls", "statement_cache"),
    [
        (
            NEON_POOLED,
            "postgresql+asyncpg://alex:pw@ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech"
            "/neondb?prepared_statement_cache_size=0",
            VERIFIED,
            False,
        ),
        (
            NEON_DIRECT,
            "postgresql+asyncpg://alex:pw@ep-cool-darkness-123456.eu-central-1.aws.neon.tech/neondb",
            VERIFIED,
            True,
        ),
        (
            "postgres://u:p@localhost:5432/app",
            "postgresql+asyncpg://u:p@localhost:5432/app",
            DatabaseTarget.tls,
            True,
        ),
        ("postgresql+asyncpg://u@h/app", "postgresql+asyncpg://u@h/app", DatabaseTarget.tls, True),
        (
            "postgresql://postgres:@/postgres?host=/tmp/sock",
            "postgresql+asyncpg://postgres:@/postgres?host=%2Ftmp%2Fsock",
            DatabaseTarget.tls,
            True,
        ),
        (
            "postgresql://u@h/app?sslmode=disable",
            "postgresql+asyncpg://u@h/app",
            "sslmode=disable",
            True,
        ),
        (
            "postgresql://u@h/app?sslmode=verify-full",
            "postgresql+asyncpg://u@h/app",
            VERIFIED,
            True,
        ),
        ("postgresql://u@h/app?ssl=true", "postgresql+asyncpg://u@h/app", UNVERIFIED, True),
        ("postgresql://u@h/app?ssl=false", "postgresql+asyncpg://u@h/app", "sslmode=disable", True),
    ],
)
def test_normalise_url(raw: str, url: str, tls: str, statement_cache: bool) -> None:
    target = normalise_url(raw)
    assert target.url == url
    assert target.tls == tls
    assert target.statement_cache is statement_cache
    assert ("statement_cache_size" in target.connect_args) is not statement_cache
    # asyncpg's own DSN: same host and database, libpq-only parameters gone.
    assert target.dsn == url.replace("postgresql+asyncpg://", "postgresql://").replace(
        "?prepared_statement_cache_size=0", ""
    )


def test_statement_cache_setting_overrides_the_host_guess() -> None:
    assert normalise_url(NEON_POOLED, statement_cache=True).statement_cache is True
    assert normalise_url("postgresql://u@h/app", statement_cache=False).statement_cache is False


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://u@h/db",
        "postgresql://u@h/db?sslmode=sometimes",
        "sqlite:///x.db",
        "postgresql://u@h/db?channel_binding=always",
        "postgresql://u@h/db?sslmode=disable&channel_binding=require",  # binding needs TLS
        "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "postgresql://u@h/db?sslmode=",  # blank is not "unset": say so rather than guess
    ],
)
def test_unsupported_urls_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        normalise_url(raw)


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


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (asyncpg.CannotConnectNowError("starting up"), True),
        (asyncpg.ConnectionDoesNotExistError("closed mid-operation"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (
            asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
            False,
        ),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (ValueError("bug"), False),
    ],
)
def test_outage_or_bug(error: BaseException, outage: bool) -> None:
    assert is_database_outage(error) is outage


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
    url = "postgresql://u@127.0.0.1:9/app"  # nothing listens on port 9: refused at once
    budget = {"db_connect_budget_seconds": 0.6, "database_url": url}
    database = await Database.open(settings.model_copy(update=budget), url)
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
