"""Parameters the routes read themselves (backend/deps.py: the list's query string, the path's
task id) are validated as FastAPI validated them when the routes declared them: the same values,
the same 422s, error for error. No database: small apps, the route as it was and as it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query, Request

from backend.deps import TaskId, query_of, task_id_of
from backend.errors import install_error_handlers
from backend.models import MAX_ID, MAX_PAGE, ListQuery

QUERIES = [
    "",
    "limit=20&after_id=7&completed=true",
    "limit=0",
    "limit=1001",
    "limit=x",
    "limit=",
    "limit=1.0",
    "limit=1.5",
    "limit=%2B5",
    "limit=%205",
    "limit=1_000",
    "limit=5&limit=7",  # the last of a repeated name
    "limit=5&limit=x",
    "limit=x&limit=5",
    "Limit=0",  # names are case-sensitive: unknown, ignored
    "unknown=1&limit=3",
    "after_id=-1",
    f"after_id={MAX_ID}",
    f"after_id={MAX_ID + 1}",
    "completed=maybe",
    "completed=",
    "completed=null",
    "completed=1",
    "completed=off",
    "completed=TRUE",
    "limit=abc&after_id=-1&completed=x",  # three errors, in declaration order
    "after_id=x&limit=0",
    "limit=%00",
]


TASK_IDS = ["1", "7", "0", "-1", str(MAX_ID), str(MAX_ID + 1), "abc", "1.0", "1.5", "%2B5"]
TASK_IDS += ["%205", "1_000", "007", "%00", "%EF%BC%91%EF%BC%92", "1e3", "0x10", "true"]


def _app(path: str, endpoint: Callable[..., Any]) -> FastAPI:
    """An app with our error handlers and one GET route."""
    app = FastAPI()
    install_error_handlers(app)
    app.get(path)(endpoint)
    return app


# The routes before: FastAPI resolved each declared parameter.
async def _declared_query(
    completed: Annotated[bool | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict[str, Any]:
    return {"completed": completed, "limit": limit, "after_id": after_id}


async def _declared_task_id(task_id: TaskId) -> dict[str, Any]:
    return {"task_id": task_id}


# The routes now: they read the parameters themselves.
async def _query_read_in_the_route(request: Request) -> dict[str, Any]:
    return query_of(request, ListQuery, ListQuery()).model_dump()


async def _task_id_read_in_the_route(request: Request) -> dict[str, Any]:
    return {"task_id": task_id_of(request)}


async def _answers(apps: tuple[FastAPI, ...], url: str) -> list[tuple[int, Any]]:
    answers = []
    for app in apps:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get(url)
        answers.append((response.status_code, response.json()))
    return answers


@pytest.fixture(scope="module")
def query_apps() -> tuple[FastAPI, FastAPI]:
    return _app("/", _declared_query), _app("/", _query_read_in_the_route)


@pytest.fixture(scope="module")
def task_id_apps() -> tuple[FastAPI, FastAPI]:
    path = "/tasks/{task_id}"
    return _app(path, _declared_task_id), _app(path, _task_id_read_in_the_route)


@pytest.mark.parametrize("query", QUERIES)
async def test_the_query_is_read_as_fastapi_read_it(
    query_apps: tuple[FastAPI, FastAPI], query: str
) -> None:
    before, now = await _answers(query_apps, f"/?{query}")
    assert now == before
    assert before[0] in (200, 422)


@pytest.mark.parametrize("task_id", TASK_IDS)
async def test_the_task_id_is_read_as_fastapi_read_it(
    task_id_apps: tuple[FastAPI, FastAPI], task_id: str
) -> None:
    before, now = await _answers(task_id_apps, f"/tasks/{task_id}")
    assert now == before
    assert before[0] in (200, 422)


async def test_an_empty_query_is_the_default_itself() -> None:
    """No query string: no validation, the default given (the route's shared instance)."""
    default = ListQuery(limit=3)
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
    assert query_of(Request(scope), ListQuery, default) is default
