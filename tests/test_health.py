"""Liveness, readiness, request ids, and the 500/503 paths of the error handlers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from fastapi import FastAPI

from backend.config import Settings
from backend.main import create_app
from backend.middleware import new_request_id
from tests.conftest import ROOT, UNREACHABLE_DATABASE, ClientFactory, Headers, app_client


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_request_id_is_echoed_or_made_up(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-ID": "req-123.abc"})
    made_up = await client.get("/healthz")
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "a\tb" + "x" * 200})
    assert echoed.headers["X-Request-ID"] == "req-123.abc"
    assert re.fullmatch("[0-9a-f]{32}", made_up.headers["X-Request-ID"])
    assert re.fullmatch("[0-9a-f]{32}", unsafe.headers["X-Request-ID"])
    assert unsafe.headers["X-Request-ID"] != made_up.headers["X-Request-ID"]


def test_made_up_request_ids_differ_in_every_worker() -> None:
    # Workers are spawned (a fresh interpreter, as uvicorn --workers does) or forked.
    draw = "from backend.middleware import new_request_id; print(new_request_id())"
    spawned = [
        subprocess.run(  # noqa: S603
            [sys.executable, "-c", draw], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    read, write = os.pipe()
    if (child := os.fork()) == 0:
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    forked = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    here = [new_request_id() for _ in range(1000)]
    assert len({*spawned, forked, *here}) == 1003


@pytest.fixture
async def unreachable_database(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client(database_url=UNREACHABLE_DATABASE, db_connect_budget_seconds=0.3)


async def test_database_outage_is_503_with_retry_after(
    unreachable_database: httpx.AsyncClient, alice: Headers
) -> None:
    for method, path in [("GET", "/api/alice/tasks"), ("POST", "/api/alice/tasks")]:
        body = {"title": "x"} if method == "POST" else None
        response = await unreachable_database.request(method, path, headers=alice, json=body)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.json() == {
            "detail": "The database is unavailable; retry shortly.",
            "code": "database_unavailable",
        }
    ready = await unreachable_database.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["code"] == "database_unavailable"


async def test_a_bug_is_a_500_without_internals(settings: Settings) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    async with app_client(app, raise_app_exceptions=False) as c:
        response = await c.get("/boom", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal server error. Quote the request id when reporting it.",
        "code": "internal_error",
        "request_id": "trace-me",
    }
    assert "hunter2" not in response.text
