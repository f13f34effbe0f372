"""The ceiling: the same task endpoints in raw Starlette + asyncpg, for side-by-side numbers.

Never used by the app. It does the same work per request as the real API (HS256 verification
with the same checks, the owner's id in every WHERE, the user provisioned in the INSERT, orjson
bodies) and nothing else: no validation layer, no dependency injection, no middleware.

    DATABASE_URL=... BETTER_AUTH_SECRET=... uvicorn bench._ceiling:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import jwt
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = os.environ["BETTER_AUTH_SECRET"].encode()
COLUMNS = "id, user_id, title, description, completed, created_at, updated_at"
POOL: asyncpg.Pool | None = None


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_UTC_Z)
    return Response(body, status, headers, media_type="application/json")


def _error(status: int, code: str) -> Response:
    return _json({"detail": code, "code": code}, status)


def _owner(request: Request) -> str | Response:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        return _error(401, "token_missing")
    try:
        claims = jwt.decode(
            header[7:], SECRET, algorithms=["HS256"], leeway=30, options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError:
        return _error(401, "invalid_token")
    if request.path_params["user_id"] != claims["sub"]:
        return _error(403, "forbidden")
    return str(claims["sub"])


def _task_id(request: Request) -> int | None:
    raw = request.path_params["task_id"]
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**63 else None


async def tasks(request: Request) -> Response:
    owner = _owner(request)
    if isinstance(owner, Response):
        return owner
    assert POOL is not None
    if request.method == "GET":
        rows = await POOL.fetch(
            f"SELECT {COLUMNS} FROM tasks WHERE user_id = $1 AND id > 0 ORDER BY id LIMIT 1001",
            owner,
        )
        return _json([dict(row) for row in rows[:1000]])
    body = orjson.loads(await request.body())
    title = body.get("title", "").strip() if isinstance(body, dict) else ""
    if not 0 < len(title) <= 200:
        return _error(422, "validation_error")
    row = await POOL.fetchrow(
        "WITH u AS (INSERT INTO users (id, email) VALUES ($1, NULL) ON CONFLICT (id) DO NOTHING) "
        f"INSERT INTO tasks (user_id, title, description) VALUES ($1, $2, $3) RETURNING {COLUMNS}",
        owner,
        title,
        body.get("description"),
    )
    assert row is not None
    return _json(dict(row), 201, {"Location": f"{request.url.path}/{row['id']}"})


def _owned_task(request: Request) -> tuple[str, int] | Response:
    """The caller and the path's task id, or the 401/403/422 to answer instead."""
    owner = _owner(request)
    if isinstance(owner, Response):
        return owner
    task_id = _task_id(request)
    return _error(422, "validation_error") if task_id is None else (owner, task_id)


async def task(request: Request) -> Response:
    owned = _owned_task(request)
    if isinstance(owned, Response):
        return owned
    owner, task_id = owned
    assert POOL is not None
    if request.method == "GET":
        row = await POOL.fetchrow(
            f"SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2", task_id, owner
        )
    elif request.method == "DELETE":
        row = await POOL.fetchrow(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 RETURNING id", task_id, owner
        )
        return Response(status_code=204) if row else _error(404, "task_not_found")
    else:  # PUT: title only, enough for a ceiling
        body = orjson.loads(await request.body())
        row = await POOL.fetchrow(
            "UPDATE tasks SET title = $3, updated_at = now() WHERE id = $1 AND user_id = $2 "
            f"RETURNING {COLUMNS}",
            task_id,
            owner,
            str(body["title"]).strip(),
        )
    return _json(dict(row)) if row else _error(404, "task_not_found")


async def toggle(request: Request) -> Response:
    owned = _owned_task(request)
    if isinstance(owned, Response):
        return owned
    owner, task_id = owned
    assert POOL is not None
    row = await POOL.fetchrow(
        "UPDATE tasks SET completed = NOT completed, updated_at = now() "
        f"WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}",
        task_id,
        owner,
    )
    return _json(dict(row)) if row else _error(404, "task_not_found")


async def _keep_session(_: asyncpg.Connection) -> None:
    """No reset query on release: the same saving the API takes."""


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global POOL
    size = int(os.environ.get("DB_POOL_SIZE", "10"))
    POOL = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=size, max_size=size, reset=_keep_session
    )
    try:
        yield
    finally:
        await POOL.close()


app = Starlette(
    routes=[
        Route("/api/{user_id}/tasks", tasks, methods=["GET", "POST"]),
        Route("/api/{user_id}/tasks/{task_id}", task, methods=["GET", "PUT", "DELETE"]),
        Route("/api/{user_id}/tasks/{task_id}/complete", toggle, methods=["PATCH"]),
        Route("/healthz", lambda _: _json({"status": "ok"})),
    ],
    lifespan=lifespan,
)
