"""/metrics: prometheus_client's numbers by route template, and right with several workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from backend.metrics import UnsafeDirectory, _checked
from tests.conftest import VIA_PGBOUNCER, ClientFactory, Database, bearer, uvicorn_process

TASK_ROUTE = "/api/{user_id}/tasks/{task_id}"
LIST_ROUTE = "/api/{user_id}/tasks"


def _samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """name + labels -> value, as Prometheus would read the scrape."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, route: str
) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and dict(labels).get("route") == route
    )


async def test_metrics_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


@pytest.fixture
async def metered(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client(metrics_enabled=True, metrics_token=SecretStr("scrape-me"))


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
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json()["code"] == ("token_missing" if authorization is None else "invalid_token")


@asynccontextmanager
async def _two_workers(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`uvicorn --workers 2` with metrics on, as the Deploy section runs it; its URL and process."""
    # TMPDIR: where the shared directory goes; an empty variable is unset.
    environment = {
        "METRICS_ENABLED": "true",
        "TMPDIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    async with uvicorn_process(database_url, tmp_path, "--workers", "2", env=environment) as server:
        yield server


async def _spread(url: str, requests: int) -> None:
    """New connections, several at a time, so both workers take some."""
    for batch in range(requests // 10):
        statuses = await asyncio.gather(
            *(_fresh_get(url, "/api/alice/tasks", bearer("alice")) for _ in range(10))
        )
        assert {r.status_code for r in statuses} == {200}, batch


async def test_every_scrape_counts_every_worker(
    direct_database_url: str, tmp_path: Path, clean_tables: None
) -> None:
    # Each request lands on either worker, and a scrape (answered by either) must still
    # report the server's totals (whatever the database route: direct, so it runs once).
    sent = 60
    async with _two_workers(direct_database_url, tmp_path) as (url, server):
        await _spread(url, sent)
        for _ in range(8):
            samples = _samples((await _fresh_get(url, "/metrics")).text)
            assert _total(samples, "http_requests_total", LIST_ROUTE) == sent
            assert _total(samples, "http_request_duration_seconds_count", LIST_ROUTE) == sent
        (shared,) = _shared_directories(tmp_path, server.pid)
        assert len({p.name for p in shared.glob("counter_*.db")}) == 2  # both served, both counted
        assert shared.parent.stat().st_mode & 0o777 == 0o700


def _shared_directories(tmp: Path, supervisor: int) -> list[Path]:
    return list((tmp / f"todo-api-metrics-{os.geteuid()}").glob(f"{supervisor}-*"))


def _workers_of(supervisor: int) -> set[int]:
    """The supervisor's live children (a killed one is a zombie until it is reaped)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {
        int(pid)
        for pid in children
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    }


@pytest.mark.skipif(VIA_PGBOUNCER, reason="counts the server's own connections to the database")
async def test_a_killed_worker_leaves_the_pool_gauges(
    direct_database_url: str, db: Database, tmp_path: Path, clean_tables: None
) -> None:
    """A worker killed by the OOM killer never runs its shutdown: its gauges must still go."""
    # Connections opened since now are the server's: this process's apps may hold others.
    [(started,)] = await db.fetch("SELECT now()")
    async with _two_workers(direct_database_url, tmp_path) as (url, server):
        (shared,) = _shared_directories(tmp_path, server.pid)
        await _spread(url, 20)
        victim = min(_gauged(shared))  # a worker that holds connections, and says so
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_workers_of(server.pid) - {victim}) < 2:  # uvicorn starts a replacement
            assert time.monotonic() < deadline, "uvicorn did not replace the worker"
            await asyncio.sleep(0.1)
        await _spread(url, 20)
        # What the live workers' pools hold is what the database sees them hold (once it has
        # noticed the dead worker's connections close: a moment).
        for _ in range(50):
            samples = _samples((await _fresh_get(url, "/metrics")).text)
            held = samples[("db_pool_connections_in_use", frozenset())]
            held += samples[("db_pool_connections_idle", frozenset())]
            [(connections,)] = await db.fetch(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'todo-api' AND backend_start > $1",
                started,
            )
            if held == connections:
                break
            await asyncio.sleep(0.1)
        assert held == connections
        assert victim not in _gauged(shared)


def _gauged(shared: Path) -> set[int]:
    """The workers whose live pool gauges are in the shared directory."""
    return {int(path.stem.rpartition("_")[2]) for path in shared.glob("gauge_livesum_*.db")}


def _squat(tmp: Path) -> tuple[Path, Path]:
    """The workers' directory, made first by "nobody", world-writable, with links planted in it
    named like worker files, pointing into a directory of root's: (squatted, link target)."""
    tmp.chmod(0o755)
    squatted = tmp / f"todo-api-metrics-{os.geteuid()}"
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, 65534, 65534)
    target = tmp / "owned-by-root"
    target.mkdir(mode=0o700)
    for pid in range(1, 65536, 997):  # some pid a worker could get
        (squatted / f"counter_{pid}.db").symlink_to(target / f"planted-{pid}")
    return squatted, target


@pytest.mark.skipif(VIA_PGBOUNCER, reason="about the workers' files, not the database route")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory as another user")
async def test_a_directory_someone_else_made_is_never_used(
    direct_database_url: str, tmp_path: Path, clean_tables: None
) -> None:
    """Another local account ("nobody") makes the workers' directory first and plants a link
    named like a worker's file: the workers must write nothing through it."""
    squatted, target = _squat(tmp_path)
    async with _two_workers(direct_database_url, tmp_path) as (url, _):
        await _spread(url, 20)
        assert (await _fresh_get(url, "/healthz")).status_code == 200
    assert list(target.iterdir()) == []
    assert {p.name for p in squatted.iterdir()} == {
        f"counter_{pid}.db" for pid in range(1, 65536, 997)
    }
    log = (tmp_path / "server.log").read_text()
    assert "metrics: not sharing numbers between workers, each counts alone" in log
    assert f"{squatted} belongs to uid 65534, not this user" in log


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d.symlink_to(d.parent / "elsewhere", target_is_directory=True), "a link"),
        (lambda d: d.write_text(""), "not a directory"),
        (lambda d: (d.mkdir(mode=0o700), d.chmod(0o777)), "writable by others"),
        (lambda d: (d.mkdir(mode=0o700), d.chmod(0o720)), "writable by others"),
    ],
    ids=["symlink", "file", "world-writable", "group-writable"],
)
def test_an_unsafe_directory_is_refused(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    directory = tmp_path / "metrics"
    (tmp_path / "elsewhere").mkdir()
    make(directory)
    with pytest.raises(UnsafeDirectory, match=reason):
        _checked(directory, create=True)


def test_a_missing_directory_is_made_private(tmp_path: Path) -> None:
    made = _checked(tmp_path / "metrics", create=True)
    assert made.stat().st_mode & 0o777 == 0o700
    with pytest.raises(UnsafeDirectory, match="cannot be used"):
        _checked(tmp_path / "absent", create=False)


async def test_invented_methods_share_one_label(metered: httpx.AsyncClient) -> None:
    """uvicorn's h11 parser passes any token as a method: 50 of them must not make 50 series."""
    for n in range(50):
        await metered.request(f"FOO{n}", "/api/alice/tasks")
    scraped = await metered.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    methods = {
        dict(labels)["method"]
        for (name, labels) in _samples(scraped.text)
        if name == "http_requests_total"
    }
    assert methods == {"other"}
    assert "FOO" not in scraped.text


async def _fresh_get(url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.get(path, headers=headers)
