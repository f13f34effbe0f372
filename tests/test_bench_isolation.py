"""The Locust scenarios in bench/ pass on the real server and catch planted bugs: a leak across
users, a retried toggle that flips twice, a conditional update that ignores If-Match.

Each run is the command the README gives (`locust -f bench/ --headless ...`), shortened, and
ends at its first violation (tests/locust_first_violation.py). Only the direct pass runs them:
what they catch is the API's, whichever the database route.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Response
from sqlalchemy import bindparam, select, update

from backend.config import Settings
from backend.db import Sql
from backend.deps import CurrentUser, DatabaseDep, TaskId
from backend.errors import TaskNotFound
from backend.main import create_app
from backend.models import tasks
from backend.responses import JsonResponse
from tests.conftest import ROOT, SECRET, VIA_PGBOUNCER, serve

pytestmark = [
    pytest.mark.usefixtures("clean_tables_sync"),
    pytest.mark.skipif(VIA_PGBOUNCER, reason="the scenarios' checks, not the database route"),
]


def run_locust(host: str, seconds: int = 6, stop_at: str = "") -> subprocess.CompletedProcess[str]:
    """Runs bench/ for `seconds`, or to its first violation (of kind `stop_at`, if given)."""
    locustfiles = "bench/,tests/locust_first_violation.py"  # bench's, ended at a violation
    command = [sys.executable, "-m", "locust", "-f", locustfiles, "--headless", "-u", "24"]
    command += ["-r", "24", "-t", f"{seconds}s", "--host", host, "--only-summary"]
    command += ["--stop-timeout", "2"]
    return subprocess.run(  # noqa: S603
        command,
        cwd=ROOT,
        env={**os.environ, "BETTER_AUTH_SECRET": SECRET, "STOP_AT_VIOLATION": stop_at},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_passes_on_the_real_server(live_server: str) -> None:
    result = run_locust(live_server)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ISOLATION" not in result.stdout + result.stderr


_EVERY_TASK = Sql.of(select(tasks).order_by(tasks.c.id))  # the bug: every user's tasks
_ANY_TASK = Sql.of(select(tasks).where(tasks.c.id == bindparam("task_id")))  # no user_id


def _list_without_owner_filter(router: APIRouter) -> None:
    @router.get("/api/{user_id}/tasks")
    async def list_tasks(user: CurrentUser, database: DatabaseDep) -> Response:
        rows = await database.fetch(_EVERY_TASK, {})
        return JsonResponse([dict(row) for row in rows])


def _read_without_owner_filter(router: APIRouter) -> None:
    @router.get("/api/{user_id}/tasks/{task_id}")
    async def read_task(task_id: TaskId, user: CurrentUser, database: DatabaseDep) -> Response:
        row = await database.fetchrow(_ANY_TASK, {"task_id": task_id})
        if row is None:
            raise TaskNotFound(task_id)
        return JsonResponse(dict(row))


_COLUMNS = [c for c in tasks.c if c.name != "version"]
_OWNED = (tasks.c.id == bindparam("task_id")) & (tasks.c.user_id == bindparam("owner_id"))
_FLIP = Sql.of(
    update(tasks).where(_OWNED).values(completed=~tasks.c.completed).returning(*_COLUMNS)
)
_RENAME = Sql.of(
    update(tasks)
    .where(_OWNED)
    .values(title=bindparam("title"), version=tasks.c.version + 1)
    .returning(*_COLUMNS)
)


def _toggle_ignoring_the_key(router: APIRouter) -> None:
    @router.patch("/api/{user_id}/tasks/{task_id}/complete")
    async def toggle_task(task_id: TaskId, user: CurrentUser, database: DatabaseDep) -> Response:
        row = await database.fetchrow(_FLIP, {"task_id": task_id, "owner_id": user.id})
        return JsonResponse(dict(row or {}))


def _update_ignoring_if_match(router: APIRouter) -> None:
    @router.put("/api/{user_id}/tasks/{task_id}")
    async def update_task(
        task_id: TaskId, body: dict[str, str], user: CurrentUser, database: DatabaseDep
    ) -> Response:
        parameters = {"task_id": task_id, "owner_id": user.id, "title": body["title"]}
        return JsonResponse(dict(await database.fetchrow(_RENAME, parameters) or {}))


def _mutant(settings: Settings, plant: Callable[[APIRouter], Any]) -> FastAPI:
    app = create_app(settings)
    leaky = APIRouter()
    plant(leaky)
    app.router.routes[0:0] = leaky.routes  # matched before the real route
    return app


@pytest.mark.parametrize(
    ("plant", "named"),
    [
        (_list_without_owner_filter, "ISOLATION: user u"),
        (_read_without_owner_filter, "ISOLATION: user u"),
        (_toggle_ignoring_the_key, "EXACTLY-ONCE: "),
        (_update_ignoring_if_match, "LOST-UPDATE: two tabs editing task"),
    ],
    ids=["list", "read", "retried-toggle", "two-tabs"],
)
def test_fails_on_a_planted_bug(
    settings: Settings, plant: Callable[[APIRouter], Any], named: str
) -> None:
    with serve(_mutant(settings, plant)) as url:
        # Up to 30 s, ended at the first violation: a busy host needs longer to stumble on one.
        result = run_locust(url, seconds=30, stop_at=named.split(":", 1)[0])
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
