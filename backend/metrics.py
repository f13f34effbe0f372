"""Prometheus metrics at /metrics (off unless METRICS_ENABLED; optionally behind a token).

The numbers are prometheus_client's. One process keeps them in memory. Under `uvicorn
--workers N` every worker writes them to files in a directory shared by the workers of that
server run (prometheus_client's multiprocess mode), so a scrape answered by any worker reports
the whole server's totals.

That directory is `<tmp>/todo-api-metrics-<uid>/<supervisor pid>-<its start time>`: a new run
never inherits an old one's counts. Its parent is private to this user (0700) and is used only
if it is a real directory of this user's that nobody else may write to, so no other local
account can plant files or links where the workers write; inside it, only this user can make
names. An operator's own PROMETHEUS_MULTIPROC_DIR (gunicorn, say) must pass the same checks;
wiping it between runs is then the operator's job, as prometheus_client documents. A directory
that fails them is not used: each worker then counts alone, and says so in an error line.

Labels are route templates and known methods, never raw paths or raw methods: no user id,
task id or invented method ever becomes a label. Nothing happens at import.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import multiprocessing
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import asyncpg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import TokenError, TokenMissing

logger = logging.getLogger("backend.metrics")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIVE_GAUGES = "gauge_live*_*.db"  # prometheus_client's files of livesum/livemax... gauges


class UnsafeDirectory(Exception):
    """A metrics directory that someone else could write to."""


def _process(pid: int) -> tuple[int, str] | None:
    """Process `pid`'s parent and start time (clock ticks since boot), None if there is no such
    process. Without /proc (not Linux) only whether it exists is known: (0, "")."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        if _PROC.is_dir():
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # someone else's process: it exists
        pass
    return 0, ""


_PROC = Path("/proc")


def _checked(directory: Path, *, create: bool) -> Path:
    """`directory`, made 0700 if `create` and absent, provided it is a real directory (not a
    link) of this user's that no one else may write to."""
    if create:
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    try:
        found = directory.lstat()
    except OSError as exc:
        raise UnsafeDirectory(f"{directory} cannot be used ({exc.strerror})") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise UnsafeDirectory(f"{directory} is not a directory (a link, or a file)")
    if found.st_uid != os.geteuid():
        raise UnsafeDirectory(f"{directory} belongs to uid {found.st_uid}, not this user")
    if found.st_mode & 0o022:
        raise UnsafeDirectory(f"{directory} is writable by others (mode {found.st_mode:o})")
    return directory


class Workers:
    """Where the workers of one server run share their numbers, and which of them are alive."""

    def __init__(self, directory: Path, supervisor: int | None) -> None:
        self.directory = directory
        self.supervisor = supervisor  # None: an operator's directory, processes unknown

    @classmethod
    def of_this_process(cls, configured: Path | None) -> Workers | None:
        """The shared directory for this process, or None: it serves alone (in memory)."""
        try:
            if configured is not None:
                return cls(_checked(configured, create=False), None)
            supervisor = multiprocessing.parent_process()  # uvicorn --workers spawns its workers
            if supervisor is None or supervisor.pid is None:
                return None
            root = Path(tempfile.gettempdir()) / f"todo-api-metrics-{os.geteuid()}"
            _checked(root, create=True)
        except UnsafeDirectory as exc:
            logger.error(
                "metrics: not sharing numbers between workers, each counts alone: %s. "
                "Remove it, or set PROMETHEUS_MULTIPROC_DIR to a directory of this user's.",
                exc,
            )
            return None
        for run in root.iterdir():  # runs whose supervisor is gone (or whose pid was reused)
            pid, _, started = run.name.partition("-")
            process = _process(int(pid)) if pid.isdigit() else None
            if process is None or process[1] != started:
                shutil.rmtree(run, ignore_errors=True)
        supervisor_process = _process(supervisor.pid)
        started = supervisor_process[1] if supervisor_process else ""
        directory = root / f"{supervisor.pid}-{started}"
        directory.mkdir(mode=0o700, exist_ok=True)  # in `root` only this user makes names
        return cls(directory, supervisor.pid)

    def share(self) -> None:
        """Switch prometheus_client to files in the directory, before any metric is made."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.directory)  # read as files open
        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]

    def forget_dead(self) -> None:
        """Drop the live gauges of workers that died without saying so (SIGKILL, the OOM killer):
        a replaced worker must not count its connections forever."""
        for path in self.directory.glob(_LIVE_GAUGES):
            pid = path.stem.rpartition("_")[2]
            if pid.isdigit() and not self._alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), path=str(self.directory))  # type: ignore[no-untyped-call]

    def _alive(self, pid: int) -> bool:
        process = _process(pid)
        if process is None:
            return False
        # A reused pid belongs to someone else (0: where /proc cannot tell).
        return self.supervisor is None or process[0] in (self.supervisor, 0)


class Metrics:
    """Request counts and latency by route template, the database pool's use, the requests
    shed past capacity, and those the rate limit served unchecked because its storage failed.

    Each app has its own registry (tests build many apps in one process); in multiprocess mode
    a scrape collects every worker's files instead.
    """

    def __init__(self, workers: Workers | None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: unused
        self.workers = workers
        if workers is not None:
            workers.share()
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
        self.rate_limit_storage_errors = Counter(
            "rate_limit_storage_errors",
            "Requests served without the rate limit because its storage failed (fail open).",
            registry=self.registry,
        )
        self.requests_shed = Counter(
            "http_requests_shed",
            "Requests refused by admission control (503 overloaded), before any work.",
            registry=self.registry,
        )
        # labels() validates and locks on every call: each label set's child is looked up once.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}
        self._pool_seen = (-1, -1)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _METHODS:  # h11 passes any token as a method: one label for all
            method = "other"
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
        if self.workers is None:
            return generate_latest(self.registry)
        self.workers.forget_dead()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.workers.directory))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def worker_exited(self) -> None:
        """This worker's live gauges leave with it (its counters stay: totals never go down)."""
        if self.workers is not None:
            multiprocess.mark_process_dead(os.getpid(), path=str(self.workers.directory))  # type: ignore[no-untyped-call]


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
                refusal = TokenError if authorization else TokenMissing
                error = refusal("Metrics need the METRICS_TOKEN bearer token.")
                await error.response()(scope, receive, send)
                return
        if (database := getattr(scope["app"].state, "database", None)) is not None:
            self.metrics.observe_pool(database.pool)
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.metrics.render()})
