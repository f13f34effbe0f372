"""Admission control (backend/admission.py) against a live uvicorn, through both doors.

The app under test is the real one (create_app: its middleware, its health routes) plus one toy
route, /slow, that serves two requests at a time for 50 ms each: a capacity of 40 requests/s
that does not depend on this machine's speed (low enough that the app's own CPU, traced by
coverage on a busy 2-core host, stays far from the bottleneck). Load comes from
bench/_openloop.py in a process of its own: requests at fixed times (open loop), latency from
each one's scheduled time.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.admission import Admission, AdmissionHttpToolsProtocol, AdmissionLimits
from backend.config import Settings
from backend.main import create_app
from backend.responses import JsonResponse
from bench._openloop import Result, run_process
from tests.conftest import ROOT, SECRET, VIA_PGBOUNCER, make_dry_run, serve

# Admission sits in front of everything: the database route is not what these tests are about.
pytestmark = pytest.mark.skipif(VIA_PGBOUNCER, reason="admission, not the database route")
# Tests whose verdicts are latencies, deadlines and shed counts against a fixed capacity are
# marked quiet; those that judge the event loop's own lag, which any neighbour's work
# stretches, alone too (pyproject.toml says how make test runs each).

SLOW_SECONDS = 0.05
CAPACITY = 2 / SLOW_SECONDS  # /slow: two at a time
MAX_WAIT = 0.3
# What this busy host adds to any latency here (scheduling, coverage tracing the server).
SLACK = 0.5
RUN_SECONDS = 3.0
# A 2xx waits MAX_WAIT at most, then is served: what admission holds p99 to. Without it the
# same load waits in a line growing by 40 requests a second: about RUN_SECONDS by the end.
SERVED_WITHIN_MS = 1000 * (MAX_WAIT + SLOW_SECONDS + SLACK)
# uvicorn's own protocol with the app's middleware (any ASGI server), or refusing from the parser.
DOORS: dict[str, dict[str, Any]] = {
    "asgi": {"http": "httptools"},
    "parser": {"http": AdmissionHttpToolsProtocol},
}


class _CountRequests:
    """Outermost in the app's stack: how many requests reached the app at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen += 1
        await self.app(scope, receive, send)


class _Hold:
    """GET /hold keeps its admission slot until the test lets it go (from another thread)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._let_go: Callable[[], object] = lambda: None

    async def route(self) -> JsonResponse:
        released, loop = asyncio.Event(), asyncio.get_running_loop()
        self._let_go = lambda: loop.call_soon_threadsafe(released.set)
        self.entered.set()
        await released.wait()
        return JsonResponse({"held": True})

    @contextmanager
    def holding(self, url: str) -> Iterator[None]:
        self.entered.clear()
        holder = threading.Thread(target=httpx.get, args=(f"{url}/hold",), kwargs={"timeout": 30})
        holder.start()
        assert self.entered.wait(10), "/hold was not admitted"
        try:
            yield
        finally:
            self.let_go()
            holder.join(timeout=10)

    def let_go(self) -> None:
        self._let_go()


def _app(settings: Settings, **admission: Any) -> tuple[FastAPI, _Hold]:
    """The real app with `admission_*` settings, plus /slow (40/s, waiting), /busy (100/s,
    blocking the loop) and /hold."""
    app = create_app(settings.model_copy(update=admission))
    pool = asyncio.Semaphore(2)  # the toy's capacity, like a database pool of two

    @app.get("/slow")
    async def slow() -> JsonResponse:
        async with pool:
            await asyncio.sleep(SLOW_SECONDS)
        return JsonResponse({"slow": True})

    @app.get("/busy")
    async def busy() -> JsonResponse:
        time.sleep(0.01)  # noqa: ASYNC251 (on purpose: the loop itself is the bottleneck)
        return JsonResponse({"busy": True})

    hold = _Hold()
    app.add_api_route("/hold", hold.route)
    return app, hold


def _offer(url: str, rate: float, seconds: float = RUN_SECONDS) -> Result:
    return run_process(url, rate, seconds, "--path", "/slow", "--timeout", "5")


def _offer_busy(url: str) -> Result:
    """1.5x what /busy serves: room left for the refusals' own CPU, traced by coverage."""
    return run_process(url, 150, RUN_SECONDS, "--path", "/busy", "--timeout", "5")


def _admission(app: FastAPI) -> Admission:
    admission = app.state.admission
    assert isinstance(admission, Admission)
    return admission


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_past_capacity_the_excess_is_refused_and_the_rest_stays_fast(
    settings: Settings, door: str
) -> None:
    app, _ = _app(settings, admission_max_concurrency=2, admission_max_wait_seconds=MAX_WAIT)
    with serve(app, **DOORS[door]) as url:
        result = _offer(url, 2 * CAPACITY)
    assert (result.errors, result.other_status) == (0, {}), result
    assert result.shed >= 0.3 * result.scheduled, result  # about half, at twice capacity
    assert result.goodput >= 0.6 * CAPACITY, result  # not starved (slack: coverage, neighbours)
    assert result.ok_p99_ms <= SERVED_WITHIN_MS, result
    assert result.shed_p99_ms <= 1000 * (MAX_WAIT + SLACK), result  # at once, or at MAX_WAIT
    assert _admission(app).in_flight == 0


@pytest.mark.quiet
def test_without_admission_the_same_load_waits_in_an_ever_longer_line(
    settings: Settings,
) -> None:
    # The two loads at once, each on a server of its own: they wait, they hardly compute.
    waiting_app, _ = _app(settings, admission_max_concurrency=0)
    blocking_app, _ = _app(settings, admission_max_concurrency=0)
    with (
        serve(waiting_app) as waiting_url,
        serve(blocking_app) as blocking_url,
        ThreadPoolExecutor(1) as background,
    ):
        waiting_run = background.submit(_offer, waiting_url, 2 * CAPACITY)
        blocking = _offer_busy(blocking_url)
        waiting = waiting_run.result()
    for result in (waiting, blocking):
        assert result.shed == 0
        assert result.ok_p99_ms > SERVED_WITHIN_MS, result  # the bound admission holds, broken
    # The waiting line is first come, first served, so it grows for everyone; the blocked loop
    # serves ready sockets in no such order (its median may stay flat while its tail grows).
    assert waiting.last_quarter_p50_ms > 2 * waiting.first_quarter_p50_ms, waiting


@pytest.mark.quiet
@pytest.mark.alone
@pytest.mark.parametrize("door", DOORS)
def test_a_loop_too_busy_to_keep_time_sheds_too(settings: Settings, door: str) -> None:
    # Requests that never suspend (CPU only; here 10 ms of blocking each, 100/s) wait in the
    # event loop's queue, not in admission's: no count of requests in flight sees them, the
    # loop's lag does. The slot limit is set out of reach.
    app, _ = _app(settings, admission_max_concurrency=1000, admission_max_wait_seconds=MAX_WAIT)
    with serve(app, **DOORS[door]) as url:
        loaded = _offer_busy(url)
    assert (loaded.errors, loaded.other_status) == (0, {}), loaded
    assert loaded.shed > 0, loaded
    assert loaded.ok_p99_ms <= SERVED_WITHIN_MS, loaded


@pytest.mark.quiet
@pytest.mark.alone
@pytest.mark.parametrize("door", DOORS)
def test_one_stall_of_the_loop_sheds_nothing(settings: Settings, door: str) -> None:
    # One request blocks the loop for longer than max_wait (a process descheduled once looks
    # the same); the requests after it find the loop on time again and must all be served.
    app, _ = _app(settings, admission_max_concurrency=1000, admission_max_wait_seconds=MAX_WAIT)

    @app.get("/stall")
    async def stall() -> JsonResponse:
        time.sleep(2 * MAX_WAIT)  # noqa: ASYNC251 (on purpose: one long stall of the loop)
        return JsonResponse({"stalled": True})

    with serve(app, **DOORS[door]) as url, httpx.Client(base_url=url, timeout=5) as client:
        for _ in range(3):
            statuses = [client.get("/stall").status_code]
            statuses += [client.get("/slow").status_code for _ in range(5)]
            assert statuses == [200] * 6
    assert _admission(app).refused == 0


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_below_capacity_nothing_is_shed(settings: Settings, door: str) -> None:
    app, _ = _app(settings, admission_max_concurrency=2, admission_max_wait_seconds=MAX_WAIT)
    with serve(app, **DOORS[door]) as url:
        result = _offer(url, 0.5 * CAPACITY)
    assert (result.shed, result.errors, result.other_status) == (0, 0, {}), result
    assert result.ok == result.scheduled
    assert result.ok_p99_ms <= 1000 * (SLOW_SECONDS + SLACK), result


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_health_and_metrics_answer_while_requests_are_shed(settings: Settings, door: str) -> None:
    app, _ = _app(
        settings,
        admission_max_concurrency=2,
        admission_max_wait_seconds=MAX_WAIT,
        metrics_enabled=True,
    )
    with serve(app, **DOORS[door]) as url:
        command = [sys.executable, "-m", "bench._openloop", "run", "--url", url]
        command += ["--path", "/slow", "--rate", str(4 * CAPACITY), "--seconds", "3"]
        load = subprocess.Popen(  # noqa: S603
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            admission = _admission(app)
            deadline = time.monotonic() + 10
            while admission.refused == 0:  # shedding has begun
                assert time.monotonic() < deadline, "nothing was shed"
                time.sleep(0.01)
            refused_before = admission.refused
            answers: list[tuple[str, int]] = []
            with httpx.Client(base_url=url, timeout=5) as client:
                while load.poll() is None and len(answers) < 60:
                    for path in ("/healthz", "/readyz", "/metrics"):
                        answers.append((path, client.get(path).status_code))
            refused_meanwhile = admission.refused - refused_before
        finally:
            load.wait(timeout=30)
        scraped = httpx.get(f"{url}/metrics").text
    assert answers, "the load ended before any health check"
    assert {status for _, status in answers} == {200}, answers
    assert refused_meanwhile > 0  # the checks were answered while requests were being refused
    # Every refusal, from either door, is counted for operators.
    assert f"http_requests_shed_total {float(admission.refused)}" in scraped, scraped


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_a_refusal_is_our_503_before_auth_and_body_and_costs_no_request_work(
    settings: Settings, door: str
) -> None:
    app, hold = _app(settings, admission_max_concurrency=1, admission_max_queue=0)
    counter = _CountRequests(app.build_middleware_stack())
    app.middleware_stack = counter
    with serve(app, **DOORS[door]) as url, hold.holding(url), httpx.Client(base_url=url) as client:
        reached_before = counter.seen
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            started = time.monotonic()
            refused = client.post(
                "/api/alice/tasks",
                content=b"not json",
                headers={**headers, "Content-Type": "text/plain", "X-Request-ID": "trace-503"},
            )
            assert time.monotonic() - started < 0.5
            assert refused.status_code == 503
            assert refused.json() == {
                "detail": "The server is at capacity; retry after `Retry-After` seconds.",
                "code": "overloaded",
            }
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"] == "application/json"
            assert refused.headers["x-request-id"] == "trace-503"
        # The parser door answers without the app; the ASGI door from inside it.
        assert counter.seen - reached_before == (0 if door == "parser" else 2)
        # A cross-origin request is refused inside the app by either door, where CORS sees it.
        cross_origin = client.get("/api/alice/tasks", headers={"Origin": "https://app.example"})
        assert cross_origin.status_code == 503
        assert cross_origin.json()["code"] == "overloaded"
        assert counter.seen - reached_before == (1 if door == "parser" else 3)
    assert (_admission(app).refused, _admission(app).in_flight) == (3, 0)


def test_the_parser_door_without_admission_is_uvicorn_as_ever(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"admission_max_concurrency": 0}))
    with serve(app, http=AdmissionHttpToolsProtocol) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/alice/tasks").json()["code"] == "token_missing"


@pytest.mark.parametrize("door", DOORS)
def test_a_connection_refused_on_stays_usable(settings: Settings, door: str) -> None:
    app, hold = _app(settings, admission_max_concurrency=1, admission_max_queue=0)
    with serve(app, **DOORS[door]) as url:
        port = int(url.rsplit(":", 1)[1])
        with hold.holding(url), socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            # A refused body is skipped, and what follows it on the connection is answered.
            conn.sendall(
                b"POST /api/alice/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b'Content-Length: 13\r\n\r\n{"title": 1}\n'
                b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            first, second = _responses(conn, 2)
            assert first.startswith(b"HTTP/1.1 503 ")
            assert b'"code":"overloaded"' in first
            assert second.startswith(b"HTTP/1.1 200 ")
            assert second.endswith(b'{"status":"ok"}')
        with hold.holding(url), socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            # HTTP/1.0 without keep-alive: refused, then closed, as uvicorn would.
            conn.sendall(b"GET /api/alice/tasks HTTP/1.0\r\n\r\n")
            (refused,) = _responses(conn, 1)
            assert refused.startswith(b"HTTP/1.1 503 ")
            assert b"\r\nconnection: close\r\n" in refused.lower()
            conn.settimeout(2)  # well before uvicorn's keep-alive timeout (5 s) would close it
            assert conn.recv(1) == b""
        with httpx.Client(base_url=url) as client:  # slot free again: served as ever
            assert client.get("/api/alice/tasks").status_code == 401
    assert _admission(app).in_flight == 0


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_refusals_in_one_read_leave_no_keep_alive_timer_behind(
    settings: Settings, door: str
) -> None:
    # Each refusal from the parser arms uvicorn's keep-alive timer; one armed over another
    # was never cancelled and closed the connection under the next, admitted, request.
    keep_alive_seconds = 1
    app, hold = _app(settings, admission_max_concurrency=1, admission_max_queue=0)
    with (
        serve(app, timeout_keep_alive=keep_alive_seconds, **DOORS[door]) as url,
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as conn,
    ):
        with hold.holding(url):
            conn.sendall(b"GET /api/alice/tasks HTTP/1.1\r\nHost: t\r\n\r\n" * 2)
            assert [r.split(b" ", 2)[1] for r in _responses(conn, 2)] == [b"503", b"503"]
        hold.entered.clear()
        conn.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")  # admitted, held past the timer
        assert hold.entered.wait(10), "/hold was not admitted"
        conn.settimeout(keep_alive_seconds + 0.5)
        with pytest.raises(TimeoutError):  # a stale timer closes the connection: b"" here
            conn.recv(1)
        hold.let_go()
        conn.settimeout(5)
        (held,) = _responses(conn, 1)
        assert held.startswith(b"HTTP/1.1 200 ")
    assert _admission(app).in_flight == 0


CLOSING_REFUSALS = {  # what makes uvicorn close after a response, and the server headers then
    "HTTP/1.0 keep-alive": (b"GET /api/alice/tasks HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", []),
    "draining": (  # backend/serve.py adds this server header during a drain
        b"GET /api/alice/tasks HTTP/1.1\r\nHost: t\r\n\r\n",
        [("Connection", "close")],
    ),
}


@pytest.mark.parametrize("case", CLOSING_REFUSALS)
@pytest.mark.parametrize("door", DOORS)
def test_a_refusal_closes_the_connection_where_uvicorn_would(
    settings: Settings, door: str, case: str
) -> None:
    request, server_headers = CLOSING_REFUSALS[case]
    app, hold = _app(settings, admission_max_concurrency=1, admission_max_queue=0)
    with (
        serve(app, headers=server_headers, **DOORS[door]) as url,
        hold.holding(url),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as conn,
    ):
        conn.sendall(request)
        (refused,) = _responses(conn, 1)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert refused.lower().count(b"\r\nconnection: close\r\n") == 1, refused
        conn.settimeout(2)  # well before uvicorn's keep-alive timeout (5 s) would close it
        assert conn.recv(1) == b""


def _responses(conn: socket.socket, count: int) -> list[bytes]:
    """`count` responses with Content-Length framing, read off a raw socket."""
    data, responses = b"", list[bytes]()
    while len(responses) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(data) >= end + 4 + length:
                responses.append(data[: end + 4 + length])
                data = data[end + 4 + length :]
                continue
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {len(responses)} responses"
        data += chunk
    return responses


@pytest.mark.quiet
@pytest.mark.parametrize("door", DOORS)
def test_queueing_is_bounded_in_time_and_a_standing_queue_refuses_newcomers_at_once(
    settings: Settings, door: str
) -> None:
    max_wait = 0.4
    app, hold = _app(
        settings,
        admission_max_concurrency=1,
        admission_max_queue=8,
        admission_max_wait_seconds=max_wait,
    )
    answers: dict[str, tuple[int, float]] = {}

    def send(name: str) -> None:
        started = time.monotonic()
        status = httpx.get(f"{url}/api/alice/tasks", timeout=10).status_code
        answers[name] = (status, time.monotonic() - started)

    def queued() -> None:
        deadline = time.monotonic() + 10
        while _admission(app).waiting == 0:
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.005)

    with serve(app, **DOORS[door]) as url, hold.holding(url):
        first = threading.Thread(target=send, args=("waited out",))
        first.start()
        queued()
        time.sleep(0.6 * max_wait)  # the first has now waited over half of max_wait
        send("newcomer")
        first.join(timeout=10)
        # A slot handed over: a waiter is served when the holder finishes.
        waiter = threading.Thread(target=send, args=("served",))
        waiter.start()
        queued()
    waiter.join(timeout=10)
    status, waited = answers["waited out"]
    assert status == 503
    assert 0.9 * max_wait <= waited <= max_wait + 0.5
    status, waited = answers["newcomer"]
    assert status == 503
    assert waited < 0.5 * max_wait  # it would have waited max_wait had it joined the queue
    assert answers["served"][0] == 401  # admitted: it reached the token check
    assert _admission(app).in_flight == 0


async def test_slots_are_counted_through_cancellations() -> None:
    admission = Admission(AdmissionLimits(1, 4, 60.0, 1))
    assert await admission.enter()
    cancelled = asyncio.create_task(admission.enter())
    served = asyncio.create_task(admission.enter())
    await asyncio.sleep(0)  # both are waiting now
    cancelled.cancel()
    admission.leave()  # skips the cancelled waiter, hands the slot to the next
    assert await served
    assert admission.in_flight == 1
    # Cancelled after being handed the slot but before running: the slot is passed on.
    late = asyncio.create_task(admission.enter())
    await asyncio.sleep(0)
    admission.leave()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert admission.in_flight == 0
    assert await admission.enter()  # and it is free
    admission.leave()
    assert (admission.in_flight, admission.refused) == (0, 0)


def test_admission_is_on_by_default_and_the_makefile_serves_through_the_parser_door() -> None:
    defaults = Settings(_env_file=None, better_auth_secret=SECRET)
    assert AdmissionLimits.from_settings(defaults) == AdmissionLimits(
        max_concurrency=6 * defaults.db_pool_size,
        max_queue=512,
        max_wait=0.1,
        retry_after_seconds=1,
    )
    off = defaults.model_copy(update={"admission_max_concurrency": 0})
    assert AdmissionLimits.from_settings(off) is None
    assert create_app(off).state.admission is None
    for target in ("serve", "run"):
        recipe = make_dry_run(target)
        assert "--http backend.admission:AdmissionHttpToolsProtocol --backlog 4096" in recipe
