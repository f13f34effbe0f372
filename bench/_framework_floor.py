"""What the web framework alone costs per request, before any real work (no database, no token).

    .venv/bin/python -m bench._framework_floor                  # pyperf: 20 worker processes
    .venv/bin/python -m bench._framework_floor --fast -o after.json

Calls each ASGI app in-process, sequentially, with a GET shaped like ours; pyperf (the bench
extra) calibrates the loop count, runs it in fresh worker processes and prints mean +- std dev
per request. It explains the gap `make bench` reports between the API and the raw Starlette
ceiling. Before/after a change: `-o before.json` on the old code, `-o after.json` on the new,
then `.venv/bin/python -m pyperf compare_to before.json after.json --table` (the same names
pair up; it says which differences are significant). It must time nothing but the app call.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import pyperf
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from backend.config import Settings
from backend.main import create_app
from backend.responses import JsonResponse
from bench._cpu_per_request import http_scope

PATH = "/api/u/tasks/1"


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    """One loop per worker process, kept across pyperf's values (as a server keeps its own)."""
    return asyncio.new_event_loop()


@functools.cache
def _app(make_app: Callable[[], ASGIApp]) -> ASGIApp:
    return make_app()  # built once per worker process, outside every timed loop


def _time_requests(loops: int, make_app: Callable[[], ASGIApp], path: str) -> float:
    """pyperf's time function: seconds for `loops` GETs of `path`, one after another."""
    return _event_loop().run_until_complete(_requests(_app(make_app), path, loops))


async def _requests(app: ASGIApp, path: str, loops: int) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(loops):
        await app(http_scope("GET", path, "abc"), receive, send)
    return time.perf_counter() - started


def _starlette() -> ASGIApp:
    async def endpoint(request: StarletteRequest) -> JsonResponse:
        return JsonResponse({"id": int(request.path_params["task_id"])})

    return Starlette(routes=[Route("/api/{user_id}/tasks/{task_id}", endpoint)])


def _fastapi(with_dependencies: bool) -> ASGIApp:
    app = FastAPI()

    async def user(request: Request) -> str:
        return "u"

    async def owner(u: Annotated[str, Depends(user)], user_id: str) -> str:
        return u

    async def connection() -> AsyncIterator[int]:
        yield 1

    if with_dependencies:  # the shape of ours: owner -> user, and a per-request resource

        @app.get("/api/{user_id}/tasks/{task_id}")
        async def read(
            task_id: int,
            _: Annotated[str, Depends(owner)],
            __: Annotated[int, Depends(connection, scope="function")],
        ) -> JsonResponse:
            return JsonResponse({"id": task_id})
    else:

        @app.get("/api/{user_id}/tasks/{task_id}")
        async def bare(user_id: str, task_id: int) -> JsonResponse:
            return JsonResponse({"id": task_id})

    return app


def _ours() -> ASGIApp:
    secret = secrets.token_urlsafe(48)
    app = create_app(Settings(_env_file=None, better_auth_secret=secret, log_level="WARNING"))

    @app.get("/floor/{user_id}/tasks/{task_id}")
    async def floor(user_id: str, task_id: int) -> JsonResponse:
        return JsonResponse({"id": task_id})

    return app


def main() -> None:
    runner = pyperf.Runner(program_args=("-m", "bench._framework_floor"))  # workers alike
    runner.metadata["description"] = "in-process, sequential GETs; time per request"
    rows: list[tuple[str, Callable[[], ASGIApp], str]] = [
        ("Starlette route (the ceiling's framework)", _starlette, PATH),
        ("FastAPI route, path parameters only", functools.partial(_fastapi, False), PATH),
        ("FastAPI route + our dependency shape", functools.partial(_fastapi, True), PATH),
        ("our app's middleware and handlers, bare route", _ours, "/floor/u/tasks/1"),
    ]
    for label, make_app, path in rows:
        runner.bench_time_func(label, _time_requests, make_app, path)


if __name__ == "__main__":
    main()
