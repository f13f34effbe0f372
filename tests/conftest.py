"""Fixtures: one throwaway embedded PostgreSQL per run, migrated with the real Alembic CLI;
the real app over httpx's ASGITransport; every test starts from empty tables."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
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


@pytest.fixture
def alice() -> Headers:
    return bearer("alice")


@pytest.fixture
def bob() -> Headers:
    return bearer("bob")
