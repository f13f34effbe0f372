"""Prometheus metrics at /metrics (off unless METRICS_ENABLED; optionally behind a token).

The numbers are prometheus_client's. One process keeps them in memory. Under `uvicorn
--workers N` every worker writes them to files in a directory shared by the workers of that
server run (prometheus_client's multiprocess mode), so a scrape answered by any worker reports
the whole server's totals. The directory is named after the supervisor process and its start
time, so a new run never inherits an old one's counts, and a worker removes the directories of
supervisors that are gone. An operator's own PROMETHEUS_MULTIPROC_DIR (gunicorn, say) is used
as given; wiping it between runs is then the operator's job, as prometheus_client documents.

Labels are route templates, never raw paths: no user id or task id ever becomes a label.
"""

from __future__ import annotations

import hmac
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

_DIRECTORY_PREFIX = "todo-api-metrics-"


def _start_time(pid: int) -> str:
    """When process `pid` started (Linux /proc, clock ticks since boot); "" where unknown."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _shared_directory() -> Path | None:
    """Where this process's metrics go when several processes serve, else None (in memory)."""
    if configured := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return Path(configured)
    supervisor = multiprocessing.parent_process()  # uvicorn --workers spawns its workers
    if supervisor is None or supervisor.pid is None:
        return None
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{_DIRECTORY_PREFIX}*"):
        pid = stale.name.removeprefix(_DIRECTORY_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    directory = root / f"{_DIRECTORY_PREFIX}{supervisor.pid}-{_start_time(supervisor.pid)}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


# prometheus_client picks in-memory or file-backed values when it is imported: decide first.
SHARED_DIRECTORY = _shared_directory()
if SHARED_DIRECTORY is not None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(SHARED_DIRECTORY)

import asyncpg  # noqa: E402
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from backend.responses import error_response  # noqa: E402

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: unused


class Metrics:
    """Request counts and latency by route template, and the database pool's use.

    Each app has its own registry (tests build many apps in one process); in multiprocess mode
    a scrape collects every worker's files instead.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "Requests handled, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to the response's last byte.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        # Summed over live workers: connections in use (or idle) in the whole server.
        self.in_use = Gauge(
            "db_pool_connections_in_use",
            "Connections checked out of the pools.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.idle = Gauge(
            "db_pool_connections_idle",
            "Connections waiting in the pools.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        # labels() validates and locks on every call: each label set's child is looked up once.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}
        self._pool_seen = (-1, -1)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if (counter := self._counted.get((method, route, status))) is None:
            counter = self._counted[method, route, status] = self.requests.labels(
                method, route, str(status)
            )
        if (histogram := self._timed.get((method, route))) is None:
            histogram = self._timed[method, route] = self.latency.labels(method, route)
        counter.inc()
        histogram.observe(seconds)

    def observe_pool(self, pool: asyncpg.Pool) -> None:
        idle = pool.get_idle_size()
        seen = (pool.get_size() - idle, idle)
        if seen != self._pool_seen:  # a gauge write (a file write, with workers) only on change
            self._pool_seen = seen
            self.in_use.set(seen[0])
            self.idle.set(seen[1])

    def render(self) -> bytes:
        if SHARED_DIRECTORY is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(SHARED_DIRECTORY))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def worker_exited() -> None:
    """A worker's live gauges leave with it (its counters stay: totals never go down)."""
    if SHARED_DIRECTORY is not None:
        multiprocess.mark_process_dead(os.getpid(), path=str(SHARED_DIRECTORY))  # type: ignore[no-untyped-call]


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path: ids stay out)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, token: str | None) -> None:
        self.app = app
        self.metrics = metrics
        # Compared as bytes: a header may hold any byte, and compare_digest refuses non-ASCII str.
        self.expected_authorization = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics":
            await self._serve(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)
            if (database := getattr(scope["app"].state, "database", None)) is not None:
                self.metrics.observe_pool(database.pool)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected_authorization is not None:
            authorization = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(authorization, self.expected_authorization):
                response = error_response(
                    401,
                    "token_missing",
                    "Metrics need the METRICS_TOKEN bearer token.",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        if (database := getattr(scope["app"].state, "database", None)) is not None:
            self.metrics.observe_pool(database.pool)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.metrics.render()})
