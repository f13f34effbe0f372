"""The ceiling: the same task endpoints in raw Starlette + asyncpg, for side-by-side numbers.

Never used by the app. It does the same work per request as the real API and nothing else: HS256
verification with the same checks, the owner's id in every WHERE, the user provisioned in the
INSERT, the same SQL (version raised by every change, the page's running size, If-Match's NULL-able
versions), the ETag and Cache-Control headers, a hash of every list page, an Idempotency-Key's
five round trips (begin, claim, insert, store the response, commit), orjson bodies. No validation
layer, no dependency injection, no middleware.

    DATABASE_URL=... BETTER_AUTH_SECRET=... uvicorn bench._ceiling:app
"""

from __future__ import annotations

import hashlib
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
GUARD = "($3::bigint[] IS NULL OR version = ANY($3)) AND NOT coalesce(version = ANY($4), false)"
PAGE = (
    f"SELECT {COLUMNS}, page_bytes FROM (SELECT {COLUMNS}, sum(octet_length(title) +"
    " coalesce(octet_length(description), 0) + 200) OVER (ORDER BY id) AS page_bytes,"
    " octet_length(title) + coalesce(octet_length(description), 0) + 200 AS task_bytes"
    " FROM tasks WHERE user_id = $1 AND id > 0 AND ($2::boolean IS NULL OR completed = $2)"
    " ORDER BY id LIMIT 1001) AS page WHERE page_bytes - task_bytes < 524288 ORDER BY id"
)
CLAIM = (
    "INSERT INTO idempotency_keys (user_id, key, fingerprint) SELECT $1, $2, $3"
    " WHERE set_config('lock_timeout', '5000ms', true) IS NOT NULL ON CONFLICT DO NOTHING"
    " RETURNING created_at, set_config('lock_timeout', NULL, true)"
)
STORE = (
    "WITH swept AS (DELETE FROM idempotency_keys WHERE (user_id, key) IN (SELECT user_id, key"
    " FROM idempotency_keys WHERE created_at < now() - interval '24 hours' ORDER BY created_at"
    " LIMIT 10 FOR UPDATE SKIP LOCKED)) UPDATE idempotency_keys SET status = $3, headers = $4,"
    " body = $5 WHERE user_id = $1 AND key = $2"
)
CREATE = (
    "WITH u AS (INSERT INTO users (id, email) VALUES ($1, NULL) ON CONFLICT (id) DO NOTHING) "
    f"INSERT INTO tasks (user_id, title, description) VALUES ($1, $2, $3) RETURNING {COLUMNS},"
    " version"
)
STORED = "SELECT status, headers, body FROM idempotency_keys WHERE user_id = $1 AND key = $2"
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


def _task(
    row: asyncpg.Record, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    task = dict(row)
    etag = f'"{task["id"]}.{task.pop("version")}"'
    return _json(task, status, {"ETag": etag, **(headers or {})})


async def tasks(request: Request) -> Response:
    owner = _owner(request)
    if isinstance(owner, Response):
        return owner
    assert POOL is not None
    if request.method == "GET":
        request.headers.get("if-none-match")  # read, as the API does
        rows = await POOL.fetch(PAGE, owner, None)
        page = []
        for row in rows[:1000]:
            task = dict(row)
            del task["page_bytes"]
            page.append(task)
        body = orjson.dumps(page, option=orjson.OPT_UTC_Z)
        etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        return Response(body, 200, headers, media_type="application/json")
    body = orjson.loads(await request.body())
    title = body.get("title", "").strip() if isinstance(body, dict) else ""
    if not 0 < len(title) <= 200:
        return _error(422, "validation_error")
    description = body.get("description")
    key = request.headers.get("idempotency-key")
    if key is None:
        row = await POOL.fetchrow(CREATE, owner, title, description)
        assert row is not None
        return _task(row, 201, {"Location": f"{request.url.path}/{row['id']}"})
    fingerprint = hashlib.sha256(f"create\n{title}\n{description}".encode()).digest()
    async with POOL.acquire() as connection, connection.transaction():
        if await connection.fetchrow(CLAIM, owner, key, fingerprint) is None:
            stored = await connection.fetchrow(STORED, owner, key)
            assert stored is not None
            headers = orjson.loads(stored["headers"]) | {"Idempotent-Replayed": "true"}
            return Response(stored["body"], stored["status"], headers, "application/json")
        row = await connection.fetchrow(CREATE, owner, title, description)
        assert row is not None
        response = _task(row, 201, {"Location": f"{request.url.path}/{row['id']}"})
        kept = {"Location": response.headers["Location"], "ETag": response.headers["ETag"]}
        await connection.execute(STORE, owner, key, 201, orjson.dumps(kept).decode(), response.body)
        return response


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
        request.headers.get("if-none-match")  # read, as the API does
        row = await POOL.fetchrow(
            f"SELECT {COLUMNS}, version FROM tasks WHERE id = $1 AND user_id = $2", task_id, owner
        )
        return _task(row, headers={"Cache-Control": "private, no-cache"}) if row else _missing()
    request.headers.get("if-match")
    if request.method == "DELETE":
        row = await POOL.fetchrow(
            f"DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND {GUARD} RETURNING id",
            task_id,
            owner,
            None,
            None,
        )
        return Response(status_code=204) if row else _missing()
    body = orjson.loads(await request.body())  # PUT: title only, enough for a ceiling
    row = await POOL.fetchrow(
        "UPDATE tasks SET title = $5, updated_at = now(), version = version + 1"
        f" WHERE id = $1 AND user_id = $2 AND {GUARD} RETURNING {COLUMNS}, version",
        task_id,
        owner,
        None,
        None,
        str(body["title"]).strip(),
    )
    return _task(row) if row else _missing()


def _missing() -> Response:
    return _error(404, "task_not_found")


async def toggle(request: Request) -> Response:
    owned = _owned_task(request)
    if isinstance(owned, Response):
        return owned
    owner, task_id = owned
    assert POOL is not None
    request.headers.get("if-match")
    request.headers.get("idempotency-key")  # the mixed workload sends none on toggles
    row = await POOL.fetchrow(
        "UPDATE tasks SET completed = NOT completed, updated_at = now(), version = version + 1"
        f" WHERE id = $1 AND user_id = $2 AND {GUARD} RETURNING {COLUMNS}, version",
        task_id,
        owner,
        None,
        None,
    )
    return _task(row) if row else _missing()


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
