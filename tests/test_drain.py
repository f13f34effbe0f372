"""Drain on SIGTERM (backend/serve.py), with real signals and real processes.

After SIGTERM, /readyz is 503 `draining` at once while everything else is served (each response
with `Connection: close`); when the drain ends the listener closes, a request in flight still
gets its answer, and the process exits 0. A second signal ends the drain at once; with
`--workers 2` every worker drains. (Behind a real HAProxy: tests/test_rolling_restart.py.)
The database is reached directly: the drain does not depend on its route, so it runs once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ROOT, SECRET, SERVE_CLI, Database, bearer, uvicorn_process

pytestmark = pytest.mark.usefixtures("clean_tables")

GRACEFUL_SECONDS = 5
SERVE_FLAGS = ("--timeout-graceful-shutdown", str(GRACEFUL_SECONDS))
DRAIN_SECONDS = 3.0  # room for the requests each test sends during the drain, on a busy machine


@asynccontextmanager
async def _serving(
    database_url: str, workdir: Path, drain_seconds: float, *flags: str, **env: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    environment = {"DRAIN_SECONDS": str(drain_seconds), **env}
    serving = uvicorn_process(
        database_url, workdir, *SERVE_FLAGS, *flags, cli=SERVE_CLI, env=environment
    )
    async with serving as (url, process):
        yield url, process


def _closed(url: str) -> bool:
    """No listener at `url` any more: a new connection is refused."""
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) != 0


async def test_sigterm_drains_then_stops_and_finishes_what_is_in_flight(
    direct_database_url: str, db: Database, tmp_path: Path
) -> None:
    alice = bearer("alice")
    async with _serving(direct_database_url, tmp_path, DRAIN_SECONDS) as (url, server):
        async with httpx.AsyncClient(base_url=url, headers=alice) as client:
            assert (await client.post("/api/alice/tasks", json={"title": "before"})).is_success
            assert (await client.get("/readyz")).status_code == 200
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()["code"]) == (503, "draining")
            assert ready.headers["Retry-After"] == "2"
            assert ready.headers["Connection"] == "close"
            health = await client.get("/healthz")  # liveness holds: nothing restarts it
            assert (health.status_code, health.headers["Connection"]) == (200, "close")
            created = await client.post("/api/alice/tasks", json={"title": "while draining"})
            assert (created.status_code, created.headers["Connection"]) == (201, "close")

            # A request that is still running when the drain ends: its table is locked.
            lock = await asyncpg.connect(db.url)
            try:
                await lock.execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                in_flight = asyncio.create_task(client.get("/api/alice/tasks"))
                while not _closed(url):
                    assert time.monotonic() - signalled < DRAIN_SECONDS + 5, "still listening"
                    await asyncio.sleep(0.05)
                closed_after = time.monotonic() - signalled
                await lock.execute("COMMIT")
            finally:
                await lock.close()
            listed = await in_flight
            assert listed.status_code == 200
            assert [task["title"] for task in listed.json()] == ["before", "while draining"]
        assert await asyncio.wait_for(server.wait(), GRACEFUL_SECONDS + 5) == 0
    assert DRAIN_SECONDS <= closed_after < DRAIN_SECONDS + 2


async def test_a_second_signal_ends_the_drain_at_once(
    direct_database_url: str, tmp_path: Path
) -> None:
    async with _serving(direct_database_url, tmp_path, 60) as (url, server):
        server.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/readyz")).status_code == 503
        server.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.wait_for(server.wait(), 10) == 0
        assert time.monotonic() - started < 5  # not the 60 s drain


async def test_every_worker_drains(direct_database_url: str, tmp_path: Path) -> None:
    serving = _serving(
        direct_database_url, tmp_path, DRAIN_SECONDS, "--workers", "2", LOG_LEVEL="INFO"
    )
    async with serving as (url, supervisor):
        log = tmp_path / "server.log"
        deadline = time.monotonic() + 60
        while log.read_text().count("Application startup complete") < 2:  # both workers up
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        supervisor.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        async with httpx.AsyncClient(base_url=url) as client:
            # uvicorn's supervisor passes signals on within 0.5 s; from then on every worker
            # answers 503 (each request on a new connection: Connection: close).
            while (await client.get("/readyz")).status_code == 200:
                assert time.monotonic() - signalled < 2
            answers = [(await client.get("/readyz")).status_code for _ in range(20)]
            assert answers == [503] * 20
            assert (await client.get("/healthz")).status_code == 200
        assert await asyncio.wait_for(supervisor.wait(), DRAIN_SECONDS + GRACEFUL_SECONDS + 5) == 0
        assert time.monotonic() - signalled >= DRAIN_SECONDS
    assert log.read_text().count("Draining: /readyz answers 503") == 2


def test_a_bad_drain_period_stops_serve_with_one_line(tmp_path: Path) -> None:
    environment = {**os.environ, "BETTER_AUTH_SECRET": SECRET, "DRAIN_SECONDS": "-1"}
    result = subprocess.run(  # noqa: S603
        [sys.executable, *SERVE_CLI, "--app-dir", str(ROOT), "--port", "0"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "configuration error: DRAIN_SECONDS: Input should be greater than or equal to 0 (got '-1')"
    )
