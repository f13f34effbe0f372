"""The open-loop generator (bench/_openloop.py) measures what a client would see.

Against servers whose behaviour is known: one that blocks for 10 ms per request (100/s) must
show a queue that grows when offered twice that; requests that cannot be sent, connected or
answered are each counted, never dropped; responses are framed by Content-Length and chunked
encoding alike, and a 503 counts as shed only in our `overloaded` shape with Retry-After.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse

from backend.responses import JsonResponse, error_response
from bench._openloop import Result, _chunked_end, run_process, schedule
from tests.conftest import ROOT, serve


def test_a_server_at_half_the_offered_rate_shows_a_growing_queue() -> None:
    app = FastAPI()

    @app.get("/busy")
    async def busy() -> JsonResponse:
        time.sleep(0.01)  # noqa: ASYNC251 (on purpose: the loop itself is the bottleneck)
        return JsonResponse({"busy": True})

    with serve(app) as url:
        result = run_process(url, 200, 2.0, "--path", "/busy", "--arrivals", "uniform")
    assert result.ok == result.sent == result.scheduled == 400
    # Request n waits for the n/2 before it: ~0.25 s into the run, ~1 s by its end. A closed
    # loop would report 10 ms times its connection count, however long the line grew.
    assert result.last_quarter_p50_ms > 3 * result.first_quarter_p50_ms, result
    assert result.ok_p99_ms > 1000, result
    assert result.goodput < 120, result  # what the server did, not what was offered


def test_a_request_sent_late_is_late_for_its_client() -> None:
    # Far more than one process can send: the generator falls behind its own schedule, and
    # that delay is part of every latency it reports (the server answers in microseconds).
    command = [sys.executable, "-m", "bench._openloop", "trivial"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE) as trivial:  # noqa: S603
        try:
            assert trivial.stdout is not None
            port = int(trivial.stdout.readline().rsplit(b" ", 1)[1])
            result = run_process(f"http://127.0.0.1:{port}", 200_000, 0.1, "--path", "/")
        finally:
            trivial.terminate()
    assert result.ok + result.unsent == result.scheduled == 20_000, result  # the pool may fill
    assert result.send_lag_p99_ms > 100, result
    assert result.ok_p99_ms >= result.send_lag_p99_ms, result


def test_nothing_listening_every_request_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = run_process(f"http://127.0.0.1:{port}", 40, 0.5, "--path", "/")
    assert result.scheduled == 20
    assert (result.sent, result.connect_errors, result.ok) == (0, 20, 0)


def test_a_server_that_never_answers_times_out_and_a_full_pool_leaves_requests_unsent() -> None:
    def silent_run(*options: str) -> Result:
        with socket.socket() as silent:  # the kernel accepts connections; nobody ever reads
            silent.bind(("127.0.0.1", 0))
            silent.listen(128)
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            return run_process(url, 40, 0.5, "--path", "/", "--timeout", "0.5", *options)

    result = silent_run()
    assert (result.scheduled, result.timeouts, result.ok) == (20, 20, 0)
    bounded = silent_run("--max-connections", "3")
    assert (bounded.unsent, bounded.timeouts, bounded.peak_connections) == (17, 3, 3)
    assert bounded.errors == bounded.scheduled  # every request accounted for


def test_responses_are_framed_and_only_our_overloaded_503_counts_as_shed() -> None:
    app = FastAPI()

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"part": '
        yield b"1}"

    @app.get("/chunked")
    async def chunked() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="application/json")

    @app.get("/shed")
    async def shed() -> JsonResponse:
        return error_response(503, "overloaded", "At capacity.", {"Retry-After": "1"})

    @app.get("/unshaped")
    async def unshaped() -> PlainTextResponse:
        return PlainTextResponse("Service Unavailable", 503)

    @app.get("/closing")
    async def closing() -> JsonResponse:
        return JsonResponse({"bye": True}, headers={"Connection": "close"})

    paths = ["/chunked", "/shed", "/unshaped", "/closing"]
    options = [item for path in paths for item in ("--path", path)]
    with serve(app) as url:
        result = run_process(url, 80, 1.0, *options, "--arrivals", "uniform")
    assert result.scheduled == 80
    assert (result.ok, result.shed, result.other_status) == (40, 20, {"503": 20}), result
    assert result.errors == 0, result


def test_chunked_framing() -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    assert _chunked_end(b"HEAD" + body, 4) == 4 + len(body)
    for cut in (3, 10, len(body) - 1):
        assert _chunked_end(body[:cut], 0) == -1


def test_schedules_hold_the_rate() -> None:
    assert schedule(4, 1.0, "uniform") == [0.0, 0.25, 0.5, 0.75]
    poisson = schedule(1000, 2.0, "poisson")
    assert len(poisson) == 2000
    assert poisson == sorted(poisson)
    assert poisson[0] > 0
    assert poisson[-1] == 2.0
    gaps = [b - a for a, b in itertools.pairwise(poisson)]
    assert max(gaps) > 4 * min(gaps)  # bursts and lulls, unlike the uniform one
