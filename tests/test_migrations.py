"""Alembic: empty -> head -> base on a fresh database, the models match the migrations, several
instances migrating at once, DATABASE_URL_UNPOOLED taking the migrations, and `make run`'s
`python -m backend serve --migrate` migrating before it serves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from backend.config import DatabaseSettings
from backend.migrate import upgrade_to_head
from tests.conftest import (
    ROOT,
    SECRET,
    SERVE_CLI,
    UNREACHABLE_DATABASE,
    VIA_PGBOUNCER,
    FreshDatabase,
    bearer,
    make_dry_run,
    run_alembic,
    uvicorn_process,
)

HEAD_TABLES = {"users", "tasks", "idempotency_keys", "alembic_version"}
HEAD = ScriptDirectory.from_config(
    Config(toml_file=str(ROOT / "pyproject.toml"))
).get_current_head()


@pytest.fixture
async def fresh_database(new_database: FreshDatabase) -> str:
    return await new_database()


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


async def _version(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        return [row[0] for row in await connection.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await connection.close()


async def test_upgrade_to_head_and_downgrade_to_base(fresh_database: str) -> None:
    assert await _tables(fresh_database) == {}

    run_alembic(fresh_database, "upgrade", "head")
    tables = await _tables(fresh_database)
    assert set(tables) == HEAD_TABLES
    assert "ix_tasks_user_id_id" in tables["tasks"]
    assert tables["idempotency_keys"] == {"pk_idempotency_keys", "ix_idempotency_keys_created_at"}

    run_alembic(fresh_database, "check")  # models and migrations agree: nothing to autogenerate

    run_alembic(fresh_database, "downgrade", "base")
    assert set(await _tables(fresh_database)) <= {"alembic_version"}


async def _lock_waiters(url: str, count: int) -> None:
    """Returns once `count` sessions of the database at `url` wait for a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    # Its own connection, outside any transaction: one would keep re-reading a stale snapshot.
    watcher = await asyncpg.connect(url)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await watcher.fetchval(query) < count:
            assert asyncio.get_running_loop().time() < deadline, f"no {count} lock waiters"
            await asyncio.sleep(0.05)
    finally:
        await watcher.close()


@pytest.mark.db  # the PgBouncer pass runs it, through the pooler (below)
async def test_instances_starting_together_all_exit_0_with_the_schema_at_head(
    fresh_database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two real CLI processes, lined up behind a lock this test holds on schema `public` (a DROP
    # SCHEMA left open, then rolled back) so both reach their first CREATE TABLE at once, not
    # whenever their imports end. Without the migration lock one then fails: the other process
    # created that table first.
    hostage = await asyncpg.connect(fresh_database)
    migrations_url = fresh_database
    if VIA_PGBOUNCER:  # make test's second pass: the lock must hold behind a transaction pooler
        database = await hostage.fetchval("SELECT current_database()")
        migrations_url = request.getfixturevalue("pgbouncer").rsplit("/", 1)[0] + "/" + database
        monkeypatch.setenv("DB_STATEMENT_CACHE", "false")
    try:
        held = hostage.transaction()
        await held.start()
        await hostage.execute("DROP SCHEMA public")
        runs = asyncio.gather(
            asyncio.to_thread(run_alembic, migrations_url, "upgrade", "head"),
            asyncio.to_thread(run_alembic, migrations_url, "upgrade", "head"),
            return_exceptions=True,
        )
        await _lock_waiters(fresh_database, count=2)
        await held.rollback()
    finally:
        await hostage.close()
    finished = await runs
    failures = [run.stderr for run in finished if isinstance(run, subprocess.CalledProcessError)]
    assert failures == [], "\n".join(failure[-600:] for failure in failures)  # the error's end
    assert set(await _tables(fresh_database)) == HEAD_TABLES
    assert await _version(fresh_database) == [HEAD]
    # Exactly one of the two applied the migrations; the other found head and did nothing.
    logs = [run.stderr for run in finished if isinstance(run, subprocess.CompletedProcess)]
    assert sorted("Running upgrade  -> " in log for log in logs) == [False, True]


async def test_migrations_take_the_unpooled_url_when_it_is_set(
    new_database: FreshDatabase,
) -> None:
    pooled, unpooled = await new_database(), await new_database()
    run_alembic(pooled, "upgrade", "head", unpooled_url=unpooled)
    assert set(await _tables(unpooled)) == HEAD_TABLES
    assert await _tables(pooled) == {}


def test_a_bad_unpooled_url_stops_the_migration_with_one_line_naming_it() -> None:
    secret_url = "mysql://app:hunter2@db.example.com/app"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_alembic("postgresql://app@127.0.0.1:1/app", "upgrade", "head", unpooled_url=secret_url)
    assert failed.value.stderr.strip() == (
        "configuration error: DATABASE_URL_UNPOOLED: must be a postgresql:// URL, not mysql://"
    )
    assert "hunter2" not in failed.value.stdout + failed.value.stderr


async def test_upgrade_to_head_migrates_the_database_its_settings_name(
    new_database: FreshDatabase,
) -> None:
    """What `serve --migrate` runs in its own process: the URL from the settings it is given
    (the unpooled one first, as the CLI), never one from this process's environment."""
    pooled, unpooled = await new_database(), await new_database()
    settings = DatabaseSettings(_env_file=None, database_url=pooled, database_url_unpooled=unpooled)
    await asyncio.to_thread(upgrade_to_head, settings)  # Alembic runs a loop of its own
    assert set(await _tables(unpooled)) == HEAD_TABLES
    assert await _version(unpooled) == [HEAD]
    assert await _tables(pooled) == {}


def test_make_run_migrates_in_the_serving_process_and_make_serve_does_not() -> None:
    (run,) = [line for line in make_dry_run("run").splitlines() if "-m backend serve" in line]
    (serve,) = [line for line in make_dry_run("serve").splitlines() if "-m backend serve" in line]
    assert run.endswith(" --migrate")
    assert run.removesuffix(" --migrate") == serve


MIGRATE_AND_SERVE = (*SERVE_CLI, "--migrate")


@pytest.mark.parametrize("option", ["--help", "--version"])
def test_serve_migrate_help_answers_and_migrates_nothing(option: str) -> None:
    unreachable = {
        "DATABASE_URL": UNREACHABLE_DATABASE,
        "DATABASE_URL_UNPOOLED": UNREACHABLE_DATABASE,
    }
    done = subprocess.run(  # noqa: S603 (our own interpreter and fixed arguments)
        [sys.executable, *MIGRATE_AND_SERVE, option],
        cwd=ROOT,
        env={**os.environ, "BETTER_AUTH_SECRET": SECRET, **unreachable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ("Usage: python -m backend serve" if option == "--help" else "uvicorn") in done.stdout
    assert done.stderr == ""  # no Alembic, no connection attempt


NO_DRAIN = {"DRAIN_SECONDS": "0"}  # stopped at once: the drain is tests/test_drain.py's


async def test_serve_migrate_serves_a_fresh_database_at_head(
    fresh_database: str, tmp_path: Path
) -> None:
    async with uvicorn_process(fresh_database, tmp_path, cli=MIGRATE_AND_SERVE, env=NO_DRAIN) as (
        url,
        _,
    ):
        assert set(await _tables(fresh_database)) == HEAD_TABLES
        assert await _version(fresh_database) == [HEAD]
        async with httpx.AsyncClient(base_url=url) as client:
            created = await client.post(
                "/api/alice/tasks", json={"title": "a"}, headers=bearer("alice")
            )
        assert created.status_code == 201, created.text


@pytest.mark.skipif(VIA_PGBOUNCER, reason="the embedded PostgreSQL, not the database route")
@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_migrate_starts_the_embedded_postgres_once_and_stops_it_with_the_server(
    tmp_path: Path, workers: int
) -> None:
    """`make run` on a fresh clone: DATABASE_URL unset, the embedded PostgreSQL under .data/ is
    made, migrated and served on one start (not a start for the migration and another for the
    app), and it stops when the server does (uvicorn's single process ends by re-raising the
    SIGTERM it handled; its supervisor of workers exits 0)."""
    data = tmp_path / ".data" / "postgres"
    serving = uvicorn_process(
        "", tmp_path, "--workers", str(workers), cli=MIGRATE_AND_SERVE, env=NO_DRAIN
    )
    try:
        async with serving as (url, server):
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(workers):  # on each worker, likely
                    created = await client.post(
                        "/api/alice/tasks", json={"title": "a"}, headers=bearer("alice")
                    )
                    assert created.status_code == 201, created.text
            assert (data / "postmaster.pid").exists()
        assert server.returncode == (-signal.SIGTERM if workers == 1 else 0)
        assert (data / "log").read_text().count("ready to accept connections") == 1
        assert not (data / "postmaster.pid").exists()  # stopped, not left running
    finally:
        await _stop_if_left_running(data)


async def _stop_if_left_running(data: Path) -> None:
    """A failed run must not leave its PostgreSQL behind: a fast shutdown, waited for."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
    for _ in range(100):
        if not pid_file.exists():
            return
        await asyncio.sleep(0.1)
