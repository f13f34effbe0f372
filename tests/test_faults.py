"""PostgreSQL crashes and comes back while requests are running.

During the outage: 503 + Retry-After, never a 500, no request hangs. After: the service recovers
by itself, and every write it acknowledged (2xx) before the crash is in the database. The
clients do what a careful web client does: each create carries an Idempotency-Key and is sent
again after every 503 until it is answered, so every intended task exists exactly once.
Each test here picks its own database URL, never PgBouncer: only the direct pass runs them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from backend.db import EmbeddedPostgres
from tests.conftest import (
    VIA_PGBOUNCER,
    ClientFactory,
    Database,
    Headers,
    bearer,
    create_task,
    migrated_postgres,
    with_query,
)

pytestmark = pytest.mark.skipif(VIA_PGBOUNCER, reason="their own database URLs, never PgBouncer")

WORKERS = 8
RUN_SECONDS = 9.0
CRASH_AT, OUTAGE_SECONDS = 2.0, 2.5
TASKS = "/api/alice/tasks"
REQUEST_TIMEOUT = 15.0  # far above the connect budget: hitting it means a hung request


@dataclass
class Ledger:
    """What the clients saw: each outcome, and the writes the server acknowledged."""

    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    acknowledged: dict[int, str] = field(default_factory=dict)
    intended: set[str] = field(default_factory=set)  # titles, one Idempotency-Key each
    retries: int = 0
    replayed: int = 0
    hung: int = 0
    successes_at: list[float] = field(default_factory=list)


@pytest.fixture
def crashable_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = migrated_postgres(tmp_path / "crashable")
    yield server
    server.stop()


@pytest.fixture
async def api(
    crashable_postgres: EmbeddedPostgres, make_client: ClientFactory
) -> httpx.AsyncClient:
    """The app on the crashable server (closed before that server is, by fixture order)."""
    return await make_client(
        database_url=crashable_postgres.url(),
        db_connect_budget_seconds=1.0,
        db_connect_timeout_seconds=1.0,
    )


async def _client_loop(api: httpx.AsyncClient, worker: int, ledger: Ledger, stop_at: float) -> None:
    user = f"fault-user-{worker}"
    headers = bearer(user)
    n = 0
    retrying = False
    while time.monotonic() < stop_at or retrying:
        if not retrying:
            n += 1
        title = f"w{worker}-n{n}"
        started = time.monotonic()
        try:
            if n % 4 == 0:
                request = api.get(f"/api/{user}/tasks?limit=5", headers=headers)
            else:
                ledger.intended.add(title)
                keyed = headers | {"Idempotency-Key": title}
                request = api.post(f"/api/{user}/tasks", headers=keyed, json={"title": title})
            response = await asyncio.wait_for(request, REQUEST_TIMEOUT)
        except TimeoutError:
            ledger.hung += 1
            continue
        ledger.latencies.append(time.monotonic() - started)
        ledger.statuses.append(response.status_code)
        retrying = response.status_code == 503 and n % 4 != 0
        ledger.retries += retrying
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "2"
            assert response.json()["code"] == "database_unavailable"
            await asyncio.sleep(0.05)
        elif response.status_code == 201:
            ledger.acknowledged[response.json()["id"]] = title
            ledger.replayed += response.headers.get("Idempotent-Replayed") == "true"
        if response.status_code < 300:
            ledger.successes_at.append(time.monotonic())


async def test_postgres_crash_and_restart_under_load(
    api: httpx.AsyncClient, crashable_postgres: EmbeddedPostgres
) -> None:
    ledger = Ledger()
    pg = crashable_postgres
    socket_dir = pg.socket_dir
    started = time.monotonic()
    clients = [
        asyncio.create_task(_client_loop(api, w, ledger, started + RUN_SECONDS))
        for w in range(WORKERS)
    ]

    await asyncio.sleep(CRASH_AT)
    await asyncio.to_thread(pg.pg_ctl, "stop", "-m", "immediate", "-w")  # a crash: no checkpoint
    crashed_at = time.monotonic()
    await asyncio.sleep(OUTAGE_SECONDS)
    log = str(pg.data_dir / "log")
    await asyncio.to_thread(
        pg.pg_ctl, "start", "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log
    )
    back_at = time.monotonic()
    await asyncio.gather(*clients)

    recovered_after = min(t for t in ledger.successes_at if t > back_at) - back_at
    during = sum(1 for t in ledger.statuses if t == 503)
    print(
        f"\nfault run: {len(ledger.statuses)} requests, {len(ledger.acknowledged)} acknowledged "
        f"writes, 503s={during}, 500s={ledger.statuses.count(500)}, hung={ledger.hung}, "
        f"creates retried={ledger.retries}, replayed={ledger.replayed}, "
        f"outage={back_at - crashed_at:.2f}s, first success {recovered_after * 1000:.0f} ms "
        f"after PostgreSQL was back, max latency {max(ledger.latencies):.2f}s"
    )
    assert ledger.hung == 0
    assert set(ledger.statuses) <= {200, 201, 503}, sorted(set(ledger.statuses))
    assert during > 0, "the outage was not observed: the test proves nothing"
    assert max(ledger.latencies) < 1.0 + 1.0 + 2.0  # budget + one connect timeout + slack
    assert recovered_after < 2.0

    connection = await asyncpg.connect(pg.url())
    try:
        rows = await connection.fetch("SELECT id, title FROM tasks")
    finally:
        await connection.close()
    stored = {row["id"]: row["title"] for row in rows}
    lost = {i: t for i, t in ledger.acknowledged.items() if stored.get(i) != t}
    assert lost == {}, f"{len(lost)} acknowledged writes lost"
    # Retried until answered: every create the clients meant exists, and exactly once.
    assert ledger.retries > 0
    assert sorted(stored.values()) == sorted(ledger.intended)


async def test_a_write_behind_a_lock_timeout_is_503_busy_and_changes_nothing(
    make_client: ClientFactory, direct_database_url: str, db: Database, alice: Headers
) -> None:
    """An operator's transaction holds the task row past the database's own lock_timeout (set
    on the role or database in production; in the URL here): the database is busy, not broken."""
    client = await make_client(database_url=with_query(direct_database_url, lock_timeout="200"))
    location = (await create_task(client, alice)).headers["Location"]
    holder = await asyncpg.connect(db.url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM tasks FOR UPDATE")
            renamed = await client.put(location, headers=alice, json={"title": "renamed"})
            keyed = alice | {"Idempotency-Key": "k"}
            toggled = await client.patch(f"{location}/complete", headers=keyed)
    finally:
        await holder.close()
    for response in (renamed, toggled):
        assert response.status_code == 503
        assert response.json()["code"] == "database_busy"
        assert response.headers["Retry-After"] == "2"
    assert await db.fetch("SELECT title, completed, version FROM tasks") == [("t", False, 1)]
    assert await db.fetch("SELECT count(*) FROM idempotency_keys") == [(0,)]
    # The same key, once the lock is gone: the toggle happens, once.
    retried = await client.patch(f"{location}/complete", headers=keyed)
    assert (retried.status_code, retried.json()["completed"]) == (200, True)


@pytest.fixture(scope="module")
def password_role(postgres: EmbeddedPostgres) -> Iterator[str]:
    """A role that must give its password ("right"), as on a hosted database: its URL without
    one. The test server trusts everyone else; its pg_hba.conf is put back afterwards."""
    hba = postgres.data_dir / "pg_hba.conf"
    trusting = hba.read_text()
    hba.write_text("local all pw_user scram-sha-256\n" + trusting)
    admin = Database(postgres.url())
    asyncio.run(
        admin.execute(
            "CREATE ROLE pw_user LOGIN PASSWORD 'right' IN ROLE pg_read_all_data; "
            "SELECT pg_reload_conf()"
        )
    )
    try:
        yield postgres.url().replace("postgres:@", "pw_user@", 1)
    finally:
        hba.write_text(trusting)
        asyncio.run(admin.execute("DROP ROLE pw_user; SELECT pg_reload_conf()"))


async def test_a_refused_password_is_503_and_an_error_an_operator_reads(
    make_client: ClientFactory,
    password_role: str,
    alice: Headers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = password_role.replace("pw_user@", "pw_user:wrong@")
    client = await make_client(database_url=wrong, db_connect_budget_seconds=5)
    started = time.monotonic()
    response = await client.get(TASKS, headers=alice)
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "2"
    assert time.monotonic() - started < 2  # a wrong password is not retried for the budget
    [logged] = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert "the database refused this service (check DATABASE_URL): InvalidPasswordError" in logged
    assert "wrong" not in logged
    # The right password: served.
    right = await make_client(database_url=password_role.replace("pw_user@", "pw_user:right@"))
    assert (await right.get(TASKS, headers=alice)).status_code == 200
