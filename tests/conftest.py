"""Fixtures: one throwaway embedded PostgreSQL per run, migrated with the real Alembic CLI;
the real app over httpx's ASGITransport; every test starts from empty tables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.db import EmbeddedPostgres
from backend.main import create_app

SECRET = "test-secret-" + "x" * 60
ROOT = Path(__file__).resolve().parents[1]

Headers = dict[str, str]
TokenFactory = Callable[..., str]


def make_token(
    sub: str | None, *, secret: str = SECRET, algorithm: str = "HS256", **claims: Any
) -> str:
    """An HS256 token the way the web app's server mints one; `claims` override the defaults."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + 900, "email": f"{sub}@example.com"}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, secret, algorithm=algorithm
    )


def bearer(user_id: str, **claims: Any) -> Headers:
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}


def run_alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The Alembic CLI exactly as `make migrate` runs it, in a subprocess (it owns its loop)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(  # noqa: S603 (our own interpreter and fixed arguments)
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", delete_on_stop=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    url = postgres.url()
    run_alembic(url, "upgrade", "head")
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(_env_file=None, database_url=database_url, better_auth_secret=SECRET)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def engine(app: FastAPI) -> AsyncEngine:
    engine: AsyncEngine = app.state.engine
    return engine


@pytest.fixture(scope="session")
async def _shared_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def clean_tables(engine: AsyncEngine) -> AsyncIterator[None]:
    """Empties the tables after the test, whichever app wrote to them."""
    yield
    async with engine.connect() as connection:
        await connection.execute(text("TRUNCATE tasks, users CASCADE"))


@pytest.fixture
async def client(_shared_client: httpx.AsyncClient, clean_tables: None) -> httpx.AsyncClient:
    """The app's client; every test that uses it starts from empty tables."""
    return _shared_client


@pytest.fixture(scope="session")
def live_server(settings: Settings) -> Iterator[str]:
    """The app under a real uvicorn (its own thread and loop), for synchronous test drivers."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="live-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def empty_tables(database_url: str) -> None:
    """Synchronous twin of `clean_tables`, for tests that run outside the event loop."""

    async def truncate() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("TRUNCATE tasks, users CASCADE")
        finally:
            await connection.close()

    worker = threading.Thread(target=asyncio.run, args=(truncate(),))
    worker.start()
    worker.join()


@pytest.fixture
def clean_tables_sync(database_url: str) -> Iterator[None]:
    yield
    empty_tables(database_url)


@pytest.fixture
def alice() -> Headers:
    return bearer("alice")


@pytest.fixture
def bob() -> Headers:
    return bearer("bob")
