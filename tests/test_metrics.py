"""/metrics: prometheus_client's numbers by route template, and right with several workers."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from backend.config import Settings
from backend.main import create_app
from tests.conftest import ROOT, SECRET, VIA_PGBOUNCER, bearer

TASK_ROUTE = "/api/{user_id}/tasks/{task_id}"


def _samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """name + labels -> value, as Prometheus would read the scrape."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


async def test_metrics_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


@pytest.fixture
async def metered(settings: Settings, clean_tables: None) -> AsyncIterator[httpx.AsyncClient]:
    enabled = {"metrics_enabled": True, "metrics_token": SecretStr("scrape-me")}
    app = create_app(settings.model_copy(update=enabled))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        yield client


async def test_metrics_count_by_route_template(metered: httpx.AsyncClient) -> None:
    created = await metered.post("/api/alice/tasks", headers=bearer("alice"), json={"title": "t"})
    await metered.get(created.headers["Location"], headers=bearer("alice"))
    await metered.get("/api/alice/tasks/999999", headers=bearer("alice"))

    scraped = await metered.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    samples = _samples(scraped.text)

    def requests(method: str, route: str, status: str) -> float:
        labels = frozenset({"method": method, "route": route, "status": status}.items())
        return samples[("http_requests_total", labels)]

    assert requests("GET", TASK_ROUTE, "200") == 1
    assert requests("GET", TASK_ROUTE, "404") == 1
    assert requests("POST", "/api/{user_id}/tasks", "201") == 1
    read_count = (
        "http_request_duration_seconds_count",
        frozenset({"method": "GET", "route": TASK_ROUTE}.items()),
    )
    assert samples[read_count] == 2
    assert samples[("db_pool_connections_in_use", frozenset())] == 0
    assert samples[("db_pool_connections_idle", frozenset())] >= 1
    assert "alice" not in scraped.text  # user ids and task ids never become labels


@pytest.mark.parametrize(
    "authorization",
    [None, b"Bearer wrong", b"Bearer scrape-m\xe9", "Bearer scrape-me\u2603".encode()],
    ids=["none", "wrong token", "latin-1 byte", "UTF-8 snowman"],
)
async def test_metrics_refuse_any_other_authorization(
    metered: httpx.AsyncClient, authorization: bytes | None
) -> None:
    headers = {} if authorization is None else {b"Authorization": authorization}
    refused = await metered.get("/metrics", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_missing"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_every_scrape_counts_every_worker(
    database_url: str, tmp_path: Path, clean_tables: None
) -> None:
    # `uvicorn --workers 2`, as the Deploy section runs it: each request lands on either
    # worker, and a scrape (answered by either) must still report the server's totals.
    port, sent = _free_port(), 60
    command = [sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory"]
    command += ["--app-dir", str(ROOT), "--port", str(port), "--workers", "2", "--no-access-log"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_SECRET": SECRET,
        "METRICS_ENABLED": "true",
        "LOG_LEVEL": "WARNING",
        "DB_STATEMENT_CACHE": "false" if VIA_PGBOUNCER else "",  # as the settings fixture does
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = await asyncio.create_subprocess_exec(
            *command, cwd=tmp_path, env=env, stdout=output, stderr=output
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await _fresh_get(url, "/metrics")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.returncode is None, log.read_text()
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.1)

        # New connections, several at a time, so both workers take some.
        for batch in range(sent // 10):
            statuses = await asyncio.gather(
                *(_fresh_get(url, "/api/alice/tasks", bearer("alice")) for _ in range(10))
            )
            assert {r.status_code for r in statuses} == {200}, batch

        for _ in range(8):
            samples = _samples((await _fresh_get(url, "/metrics")).text)
            assert _total(samples, "http_requests_total") == sent
            assert _total(samples, "http_request_duration_seconds_count") == sent
        workers = {p.name for p in _shared_directories(server.pid)[0].glob("counter_*.db")}
        assert len(workers) == 2, workers  # both workers served, and both were counted
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


def _shared_directories(supervisor: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"todo-api-metrics-{supervisor}-*"))


async def _fresh_get(url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.get(path, headers=headers)
