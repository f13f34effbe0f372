"""What the web framework alone costs per request, before any real work (no database, no token).

    .venv/bin/python -m bench._framework_floor

Calls each ASGI app in-process, sequentially, with a GET shaped like ours; prints us/request.
It explains the gap `make bench` reports between the API and the raw Starlette ceiling.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from backend.config import Settings
from backend.main import create_app
from backend.responses import JsonResponse
from bench._cpu_per_request import http_scope

CALLS = 20_000
PATH = "/api/u/tasks/1"


async def _per_request_us(app: ASGIApp, path: str = PATH) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        return None

    async def one() -> None:
        scope = http_scope("GET", path, "abc")
        await app(scope, receive, send)

    for _ in range(500):
        await one()
    started = time.perf_counter()
    for _ in range(CALLS):
        await one()
    return (time.perf_counter() - started) / CALLS * 1e6


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


async def main() -> None:
    print(f"in-process, sequential, {CALLS} GETs each")
    rows = [
        ("Starlette route (the ceiling's framework)", _starlette(), PATH),
        ("FastAPI route, path parameters only", _fastapi(False), PATH),
        ("FastAPI route + our dependency shape", _fastapi(True), PATH),
        ("our app's middleware and handlers, bare route", _ours(), "/floor/u/tasks/1"),
    ]
    for label, app, path in rows:
        print(f"{label:48} {await _per_request_us(app, path):6.1f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
