"""Open-loop load: requests sent at their scheduled times whatever the server does.

wrk and Locust are closed loops (a connection sends its next request only once the last one is
answered), so a server is never offered more than it can do and a slow server slows its own
load. Real users keep clicking. Here every request has a time fixed in advance (uniform or
Poisson arrivals at rate R); at that time it goes out on an idle keep-alive connection, or a
new one (up to `max_connections`), and its latency runs from the *scheduled* time, not from
when a connection happened to be free: no coordinated omission. A request that cannot even be
sent (every connection busy, connect refused) is an error, never silently dropped.

Raw asyncio Protocols on uvloop with request bytes built beforehand, parsing only the status
line and Content-Length (or chunked framing): one Python process on one core offers about
what `python -m bench._openloop ceiling` reports.

    python -m bench._openloop                  # make bench: capacity, then 0.5x..4x of it
    python -m bench._openloop ceiling          # the generator's own ceiling (trivial server)
    python -m bench._openloop run --url http://127.0.0.1:8000 --rate 2000 --seconds 10 \\
        --users users.txt --writers writers.txt --server-pid 1234

`make bench`'s overload runs go to bench/results/<date>-overload.json as records
(bench/_records.py); bench/_render.py makes the report and chart from them, not this module.

It must not retry, pipeline, or wait for a connection: each would hide what a client saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from urllib.parse import urlsplit

import psutil
import uvloop

from bench._records import Overload, OverloadRun, Run, save
from bench._records import Result as Result  # tests take it from here, with the generator
from bench._render import render, summary_line

ROOT = Path(__file__).resolve().parents[1]
SERVER_CORE, LOAD_CORE = "0", "1"  # as bench/_throughput.py

# Below uvicorn's --timeout-keep-alive (5 s): an idle connection is dropped before the server
# may close it under a request in flight.
IDLE_SECONDS = 4.0
SWEEP_SECONDS = 0.1
RSS_EVERY_SECONDS = 0.25
TIMELINE_SECONDS = 0.5
MAX_CONNECTIONS = 4096  # a run's bound on open connections (make run's backlog holds them)
MIX = ("list",) * 5 + ("get",) * 2 + ("toggle",) * 2 + ("create",)  # as bench/wrk/api.lua
CREATE_BODY = b'{"title": "benchmark task", "description": "written by the open loop"}'


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    __slots__ = ("_buffer", "closed", "idle_since", "load", "scheduled", "transport")

    def __init__(self, load: _OpenLoop) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.scheduled = 0.0  # of the request in flight; 0 when idle
        self.idle_since = 0.0
        self.closed = False
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def send(self, scheduled: float, request: bytes) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = data
            return
        head = data[:end].lower()
        body_start = end + 4
        if b"transfer-encoding: chunked" in head:
            body_end = _chunked_end(data, body_start)
            if body_end < 0:
                self._buffer = data
                return
        else:
            body_end = body_start + _content_length(head)
            if len(data) < body_end:
                self._buffer = data
                return
        self._buffer = b""
        if len(data) > body_end:
            self.load.garbled(self)
            return
        status = int(data[9:12])
        shed = status == 503 and b"retry-after:" in head and b'"overloaded"' in data[body_start:]
        self.load.answered(self, status, shed, b"connection: close" in head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.load.lost(self)


def _content_length(head: bytes) -> int:
    """Content-Length from a lower-cased head; 0 when absent (204, 304)."""
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    line_end = head.find(b"\r\n", at)
    return int(head[at + 15 : line_end if line_end >= 0 else len(head)])


def _chunked_end(data: bytes, at: int) -> int:
    """Where a chunked body starting at `at` ends, or -1 while incomplete (no trailers)."""
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return -1
        size = int(data[at:line_end].split(b";", 1)[0], 16)
        at = line_end + 2 + size + 2
        if size == 0:
            return at if len(data) >= at else -1
        if len(data) < at:
            return -1


@dataclass
class _Counts:
    ok_latencies: list[float] = field(default_factory=list)
    shed_latencies: list[float] = field(default_factory=list)
    # (scheduled, latency, 2xx, shed)
    answered: list[tuple[float, float, bool, bool]] = field(default_factory=list)
    open_connections: list[tuple[float, int]] = field(default_factory=list)  # (when, count)
    send_lags: list[float] = field(default_factory=list)
    other_status: dict[str, int] = field(default_factory=dict)
    ok_in_window: int = 0
    sent: int = 0
    unsent: int = 0
    connect_errors: int = 0
    resets: int = 0
    garbled: int = 0
    timeouts: int = 0


class _OpenLoop:
    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        schedule: Sequence[float],
        seconds: float,
        max_connections: int,
        timeout: float,
        server_pid: int | None,
    ) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.schedule = schedule  # offsets from the start, seconds, ascending
        self.seconds = seconds
        self.max_connections = max_connections
        self.timeout = timeout
        self.server = psutil.Process(server_pid) if server_pid else None
        self.loop = asyncio.get_running_loop()
        self.counts = _Counts()
        self.idle: list[_Connection] = []  # a stack: the freshest is reused first
        self.busy: set[_Connection] = set()
        self.open = 0  # connections open or opening
        self.peak = 0
        self.next = 0
        self.start = 0.0
        self.rss: list[float] = []
        self.server_cpu: list[tuple[float, float]] = []  # (when, CPU seconds): window's ends
        self.drained = asyncio.Event()

    async def run(self, warm_connections: int) -> Result:
        await self._warm(min(warm_connections, self.max_connections))
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        self.start = time.perf_counter() + 0.05
        self._sample_server_cpu()
        self.loop.call_later(self.seconds + 0.05, self._sample_server_cpu)  # the window's end
        self.loop.call_soon(self._tick)
        sweeper = self.loop.create_task(self._sweep())
        try:
            await self.drained.wait()
        finally:
            sweeper.cancel()
        wall = time.perf_counter() - self.start
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        if len(self.server_cpu) < 2:  # drained before the window's end fired
            self._sample_server_cpu()
        self._sample_rss()
        for connection in [*self.idle, *self.busy]:
            if connection.transport is not None:
                connection.transport.close()
        cpu = cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime
        return self._result(cpu / wall)

    async def _warm(self, count: int) -> None:
        """Open `count` keep-alive connections before the first request, as the clients of a
        running server have theirs: the schedule then starts on a warm pool, not a storm."""

        async def one() -> None:
            connection = _Connection(self)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.loop.create_connection(lambda: connection, self.host, self.port)
            except (OSError, TimeoutError):
                return  # the run itself counts what this server does to connections
            self.open += 1
            connection.idle_since = time.perf_counter()
            self.idle.append(connection)

        await asyncio.gather(*(one() for _ in range(count)))
        self.peak = self.open

    def _tick(self) -> None:
        now = time.perf_counter()
        schedule, start = self.schedule, self.start
        while self.next < len(schedule) and start + schedule[self.next] <= now:
            self._dispatch(start + schedule[self.next], now)
            self.next += 1
        if self.next < len(schedule):
            delay = start + schedule[self.next] - time.perf_counter()
            self.loop.call_later(max(delay, 0.0), self._tick)
        else:
            self._maybe_drained()

    def _dispatch(self, scheduled: float, now: float) -> None:
        request = self.requests[self.next % len(self.requests)]
        connection = self._idle_connection(now)
        if connection is not None:
            self._send(connection, scheduled, request, now)
        elif self.open < self.max_connections:
            connection = _Connection(self)
            connection.scheduled = scheduled
            self.busy.add(connection)
            self.open += 1
            self.peak = max(self.peak, self.open)
            self.loop.create_task(self._connect(connection, request))
        else:
            self.counts.unsent += 1

    def _idle_connection(self, now: float) -> _Connection | None:
        idle = self.idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > IDLE_SECONDS:  # and every one below it is older
                for stale in (connection, *idle):
                    assert stale.transport is not None
                    stale.transport.close()
                idle.clear()
                return None
            return connection
        return None

    def _send(self, connection: _Connection, scheduled: float, request: bytes, now: float) -> None:
        self.busy.add(connection)
        connection.send(scheduled, request)
        self.counts.sent += 1
        self.counts.send_lags.append(now - scheduled)

    async def _connect(self, connection: _Connection, request: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.loop.create_connection(lambda: connection, self.host, self.port)
        except (OSError, TimeoutError):
            if connection in self.busy:  # not already counted as a timeout by the sweep
                self.busy.discard(connection)
                self.counts.connect_errors += 1
            connection.closed = True
            self.open -= 1
            self._maybe_drained()
            return
        if connection in self.busy:
            self._send(connection, connection.scheduled, request, time.perf_counter())
        else:  # timed out by the sweep while connecting
            assert connection.transport is not None
            connection.transport.close()

    def answered(self, connection: _Connection, status: int, shed: bool, closing: bool) -> None:
        now = time.perf_counter()
        if connection not in self.busy:  # an answer after its timeout was counted
            return
        self.busy.discard(connection)
        latency = now - connection.scheduled
        counts = self.counts
        ok = 200 <= status < 300
        counts.answered.append((connection.scheduled, latency, ok, shed))
        if ok:
            counts.ok_latencies.append(latency)
            if now <= self.start + self.seconds:
                counts.ok_in_window += 1
        elif shed:
            counts.shed_latencies.append(latency)
        else:
            key = str(status)
            counts.other_status[key] = counts.other_status.get(key, 0) + 1
        connection.scheduled = 0.0
        if closing:
            assert connection.transport is not None
            connection.transport.close()
        else:
            connection.idle_since = now
            self.idle.append(connection)
        self._maybe_drained()

    def garbled(self, connection: _Connection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            self.counts.garbled += 1
        assert connection.transport is not None
        connection.transport.abort()
        self._maybe_drained()

    def lost(self, connection: _Connection) -> None:
        self.open -= 1
        if connection in self.busy:
            self.busy.discard(connection)
            self.counts.resets += 1
            self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.next >= len(self.schedule) and not self.busy:
            self.drained.set()

    async def _sweep(self) -> None:
        """Time out requests past `timeout` (their connections are closed) and sample RSS."""
        sampled = 0.0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.perf_counter()
            for connection in [c for c in self.busy if now - c.scheduled > self.timeout]:
                self.busy.discard(connection)
                self.counts.timeouts += 1
                if connection.transport is not None:
                    connection.transport.abort()
            self.counts.open_connections.append((now, self.open))
            if now - sampled >= RSS_EVERY_SECONDS:
                sampled = now
                self._sample_rss()
            self._maybe_drained()

    def _sample_rss(self) -> None:
        if self.server is None:
            return
        try:
            processes = [self.server, *self.server.children(recursive=True)]
            self.rss.append(sum(p.memory_info().rss for p in processes) / 2**20)
        except psutil.Error:
            pass

    def _sample_server_cpu(self) -> None:
        if self.server is None:
            return
        try:
            processes = [self.server, *self.server.children(recursive=True)]
            cpu = sum(p.cpu_times().user + p.cpu_times().system for p in processes)
        except psutil.Error:
            return
        self.server_cpu.append((time.perf_counter(), cpu))

    def _result(self, generator_cpu: float) -> Result:
        counts = self.counts
        answered = sorted(counts.answered)
        quarter = max(1, len(answered) // 4)
        return Result(
            offered_rate=round(len(self.schedule) / self.seconds, 1),
            seconds=self.seconds,
            scheduled=len(self.schedule),
            sent=counts.sent,
            ok=len(counts.ok_latencies),
            goodput=round(counts.ok_in_window / self.seconds, 1),
            ok_p50_ms=_ms(_percentile(counts.ok_latencies, 0.50)),
            ok_p99_ms=_ms(_percentile(counts.ok_latencies, 0.99)),
            shed=len(counts.shed_latencies),
            shed_p50_ms=_ms(_percentile(counts.shed_latencies, 0.50)),
            shed_p99_ms=_ms(_percentile(counts.shed_latencies, 0.99)),
            other_status=dict(sorted(counts.other_status.items())),
            unsent=counts.unsent,
            connect_errors=counts.connect_errors,
            resets=counts.resets,
            garbled=counts.garbled,
            timeouts=counts.timeouts,
            peak_connections=self.peak,
            send_lag_p99_ms=_ms(_percentile(counts.send_lags, 0.99)),
            generator_cpu=round(generator_cpu, 3),
            rss_peak_mib=round(max(self.rss, default=0.0), 1),
            rss_end_mib=round(self.rss[-1] if self.rss else 0.0, 1),
            first_quarter_p50_ms=_ms(_percentile([a[1] for a in answered[:quarter]], 0.5)),
            last_quarter_p50_ms=_ms(_percentile([a[1] for a in answered[-quarter:]], 0.5)),
            timeline=self._timeline(answered),
            server_cpu=self._server_share(),
        )

    def _server_share(self) -> float:
        if len(self.server_cpu) < 2:
            return 0.0
        (began, cpu_began), (ended, cpu_ended) = self.server_cpu[:2]
        return round((cpu_ended - cpu_began) / (ended - began), 3)

    def _timeline(self, answered: list[tuple[float, float, bool, bool]]) -> list[list[float]]:
        buckets: list[list[tuple[float, float, bool, bool]]] = [
            [] for _ in range(max(1, math.ceil(self.seconds / TIMELINE_SECONDS)))
        ]
        for answer in answered:
            index = int((answer[0] - self.start) / TIMELINE_SECONDS)
            buckets[min(max(index, 0), len(buckets) - 1)].append(answer)
        timeline = []
        for index, bucket in enumerate(buckets):
            end = self.start + (index + 1) * TIMELINE_SECONDS
            connections = [n for at, n in self.counts.open_connections if at <= end]
            latencies = [latency for _, latency, _, _ in bucket]
            timeline.append(
                [
                    round(index * TIMELINE_SECONDS, 2),
                    len(bucket),
                    sum(1 for answer in bucket if answer[2]),
                    sum(1 for answer in bucket if answer[3]),
                    _ms(_percentile(latencies, 0.5)),
                    _ms(_percentile(latencies, 0.99)),
                    connections[-1] if connections else self.peak,
                ]
            )
        return timeline


TRIVIAL_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class _TrivialServer(asyncio.Protocol):
    """Answers every request at once with the same 200: the far side of `ceiling`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        data = self.buffer + data
        while (end := data.find(b"\r\n\r\n")) >= 0:
            length = _content_length(data[:end].lower())
            if len(data) < end + 4 + length:
                break
            data = data[end + 4 + length :]
            self.transport.write(TRIVIAL_RESPONSE)
        self.buffer = data


async def serve_trivial(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        _TrivialServer, "127.0.0.1", port, backlog=4096
    )
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def schedule(rate: float, seconds: float, arrivals: str = "poisson", seed: int = 1) -> list[float]:
    """Send times (seconds from the start): evenly spaced, or a Poisson process, at `rate`."""
    count = int(rate * seconds)
    if arrivals == "uniform":
        return [n / rate for n in range(count)]
    draw = random.Random(seed)
    times, at = [], 0.0
    for _ in range(count):
        at += draw.expovariate(rate)
        times.append(at)
    return [t * seconds / at for t in times] if times else times  # exactly `seconds` long


async def offer(
    url: str,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    *,
    arrivals: str = "poisson",
    max_connections: int = MAX_CONNECTIONS,
    warm_connections: int = 64,
    request_timeout: float = 10.0,
    server_pid: int | None = None,
) -> Result:
    """Send `requests` (cycled) to `url` at `rate` per second for `seconds`; what came back."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None
    assert port is not None
    times = schedule(rate, seconds, arrivals)
    load = _OpenLoop(
        host, port, requests, times, seconds, max_connections, request_timeout, server_pid
    )
    return await load.run(warm_connections)


def get_requests(host: str, paths: Sequence[str]) -> list[bytes]:
    return [f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for path in paths]


def mixed_requests(host: str, users: Path, writers: Path, count: int = 4096) -> list[bytes]:
    """bench/wrk/api.lua's mixed scenario, `count` requests in random order (fixed seed):
    50% list, 20% get, 20% toggle of the readers' tasks, 10% create for the writers."""
    readers, writing = _load_users(users), _load_users(writers)
    draw = random.Random(7)
    built = []
    for _ in range(count):
        kind = draw.choice(MIX)
        user_id, token, task_ids = draw.choice(writing if kind == "create" else readers)
        base = f"/api/{user_id}/tasks"
        path = {
            "list": base,
            "get": f"{base}/{draw.choice(task_ids)}",
            "toggle": f"{base}/{draw.choice(task_ids)}/complete",
            "create": base,
        }[kind]
        method = {"toggle": "PATCH", "create": "POST"}.get(kind, "GET")
        body = CREATE_BODY if kind == "create" else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        built.append(head.encode() + b"\r\n" + body)
    return built


def _load_users(path: Path) -> list[tuple[str, str, list[str]]]:
    users = []
    for line in path.read_text(encoding="utf-8").splitlines():
        user_id, token, ids = line.split(" ")
        users.append((user_id, token, ids.split(",")))
    return users


def _run_command(arguments: argparse.Namespace) -> None:
    parts = urlsplit(arguments.url)
    host = parts.netloc
    if arguments.users:
        requests = mixed_requests(host, arguments.users, arguments.writers or arguments.users)
    else:
        requests = get_requests(host, arguments.path or ["/"])
    result = uvloop.run(
        offer(
            arguments.url,
            requests,
            arguments.rate,
            arguments.seconds,
            arrivals=arguments.arrivals,
            max_connections=arguments.max_connections,
            warm_connections=arguments.warm_connections,
            request_timeout=arguments.timeout,
            server_pid=arguments.server_pid,
        )
    )
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


RESULT_PREFIX = "OPENLOOP_JSON "


def run_process(
    url: str,
    rate: float,
    seconds: float,
    *options: str,
    core: str | None = None,
    timeout: float = 120.0,
) -> Result:
    """One run in a process of its own (pinned to `core`): a fresh loop, none of our memory."""
    command = [sys.executable, "-m", "bench._openloop", "run", "--url", url]
    command += ["--rate", f"{rate:.1f}", "--seconds", f"{seconds:g}", *options]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    output = subprocess.run(  # noqa: S603
        command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=timeout
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith(RESULT_PREFIX))
    return Result(**json.loads(line.removeprefix(RESULT_PREFIX)))


# make bench: the overload table. Each server's capacity is measured first in the same run
# (wrk, closed loop, mixed, 64 connections); then each is offered these multiples of it.
MULTIPLES = (0.5, 1.0, 2.0, 4.0)
SECONDS = float(os.environ.get("BENCH_OPENLOOP_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_OPENLOOP_ROUNDS", "2"))
CAPACITY_SECONDS = float(os.environ.get("BENCH_OPENLOOP_CAPACITY_SECONDS", "5"))
CAPACITY_ROUNDS = 3
SERVERS = tuple(
    os.environ.get("BENCH_OPENLOOP_SERVERS", "api;api, admission off;ceiling").split(";")
)
CEILING_RATES = (8000, 16000, 24000, 32000)
LAGGING_MS = 50
SETTLE_SECONDS = 30.0  # after a run, the server may still be finishing orphaned requests


def overload(started: datetime | None = None) -> Path:
    """Measure, write bench/results/<date>-overload.json and render it (.md, chart); its path."""
    # The closed-loop bench's servers and seeding; not needed by `run`, which starts lean.
    from backend.db import EmbeddedPostgres
    from bench import _throughput as closed

    started = started or datetime.now(UTC)
    _raise_file_limit()
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        pg = EmbeddedPostgres(tmp / "pg", delete_on_stop=True)
        try:
            url = pg.url()
            closed.migrate(url)
            asyncio.run(
                closed.sql(
                    url, "ALTER SYSTEM SET synchronous_commit = off", "SELECT pg_reload_conf()"
                )
            )
            users = closed.write_users(tmp / "users.txt", asyncio.run(closed.seed(url, 42, 20)))
            writers = closed.write_users(tmp / "writers.txt", asyncio.run(closed.seed(url, 20, 1)))
            ceiling = generator_ceiling()
            with ExitStack() as stack:
                servers = [
                    stack.enter_context(closed.running(name, _free_port(), url)) for name in SERVERS
                ]
                capacity_runs = _capacity_runs(closed, servers, users)
                capacities = {
                    server.name: statistics.median(
                        run.rps for run in capacity_runs if run.server == server.name
                    )
                    for server in servers
                }
                runs = _overload_rounds(servers, capacities, users, writers, notes)
        finally:
            pg.stop()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    records = Overload(
        started=started,
        commit=closed.head_commit(),
        server_core=SERVER_CORE,
        load_core=LOAD_CORE,
        capacity_rounds=CAPACITY_ROUNDS,
        capacity_seconds=CAPACITY_SECONDS,
        multiples=list(MULTIPLES),
        seconds=SECONDS,
        rounds=ROUNDS,
        max_connections=MAX_CONNECTIONS,
        lagging_ms=LAGGING_MS,
        capacities=capacities,
        capacity_runs=capacity_runs,
        ceiling=ceiling,
        runs=runs,
        notes=notes,
    )
    path = save(records, results / f"{started:%Y-%m-%d}-overload.json")
    written = render(path)
    for each in (path, *written):
        print(f"wrote {each.relative_to(ROOT)}")
    return written[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _capacity_runs(closed: ModuleType, servers: list[Any], users: Path) -> list[Run]:
    """Each server under wrk's closed loop (mixed, 64 connections), CAPACITY_ROUNDS rounds."""
    for server in servers:
        closed.wrk(server, "mixed", users, 3, closed.CONNECTIONS)  # warm-up
    runs: list[Run] = []
    for n in range(1, CAPACITY_ROUNDS + 1):
        for server in servers:
            runs.append(
                closed.wrk(
                    server,
                    "mixed",
                    users,
                    CAPACITY_SECONDS,
                    closed.CONNECTIONS,
                    part="capacity",
                    round_number=n,
                )
            )
    return runs


def _overload_rounds(
    servers: list[Any],
    capacities: dict[str, float],
    users: Path,
    writers: Path,
    notes: list[str],
) -> list[OverloadRun]:
    runs = []
    for round_number in range(1, ROUNDS + 1):
        for multiple in MULTIPLES:
            for server in servers:  # alternating, so drift hits every server alike
                capacity = capacities[server.name]
                # Every server, not only this one: they share core 0, and one still working
                # off the last run's backlog (4,096 connections' worth) starves the next.
                for other in servers:
                    _settle(other.process.pid, other.name, notes)
                result = run_process(
                    server.url,
                    multiple * capacity,
                    SECONDS,
                    "--users",
                    str(users),
                    "--writers",
                    str(writers),
                    "--server-pid",
                    str(server.process.pid),
                    core=LOAD_CORE,
                )
                runs.append(OverloadRun(server.name, multiple, capacity, result, round_number))
                print(summary_line(runs[-1]), flush=True)
    return runs


def _settle(pid: int, name: str, notes: list[str]) -> None:
    """Wait until the server is idle (under 5% of a core over half a second), up to a bound;
    a server still busy then is noted in the records, as the next run's figures may show it."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        before = process.cpu_times()
        time.sleep(0.5)
        after = process.cpu_times()
        if (after.user + after.system) - (before.user + before.system) < 0.025:
            return
    line = f"{name} still busy {SETTLE_SECONDS:g} s after its last run"
    print(line, flush=True)
    notes.append(line)


def generator_ceiling() -> list[Result]:
    """What this generator can itself offer on one core: a trivial server on the other core
    answers at once, and the rate climbs until sending falls behind."""
    command = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bench._openloop", "trivial"]
    server = subprocess.Popen(  # noqa: S603
        command, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().rsplit(" ", 1)[1])
        results = []
        for rate in CEILING_RATES:
            result = run_process(f"http://127.0.0.1:{port}", rate, 3, "--path", "/", core=LOAD_CORE)
            results.append(result)
            print(
                f"generator vs trivial server: offered {rate}/s, answered {result.goodput:.0f}/s, "
                f"send lag p99 {result.send_lag_p99_ms:.1f} ms, CPU {result.generator_cpu:.2f}",
                flush=True,
            )
        return results
    finally:
        server.terminate()
        server.wait(timeout=10)


def _raise_file_limit() -> None:
    """Thousands of connections need thousands of descriptors (servers started after inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._openloop", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="one open-loop run; prints OPENLOOP_JSON {...}")
    run.add_argument("--url", required=True)
    run.add_argument("--rate", type=float, required=True, help="requests per second")
    run.add_argument("--seconds", type=float, default=10.0)
    run.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    run.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    run.add_argument(
        "--warm-connections", type=int, default=64, help="opened before the first request"
    )
    run.add_argument("--timeout", type=float, default=10.0)
    run.add_argument("--server-pid", type=int)
    run.add_argument("--users", type=Path, help="users file of bench._throughput (mixed CRUD)")
    run.add_argument("--writers", type=Path)
    run.add_argument("--path", action="append", help="GET these paths instead (repeatable)")
    commands.add_parser("ceiling", help="the generator's own ceiling against a trivial server")
    trivial = commands.add_parser("trivial", help="serve the trivial server (for `ceiling`)")
    trivial.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args(argv)
    _raise_file_limit()
    if arguments.command == "run":
        _run_command(arguments)
    elif arguments.command == "trivial":
        uvloop.run(serve_trivial(arguments.port))
    elif arguments.command == "ceiling":
        generator_ceiling()
    else:
        overload()


if __name__ == "__main__":
    main(sys.argv[1:])
