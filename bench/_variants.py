"""Variants of the app for before/after measurements in `make bench` (never deployed).

`pydantic_app`: list and read return plain rows through `response_model`, so FastAPI validates
and serialises them with pydantic-core, instead of our orjson bytes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy import bindparam, select

from backend.db import Sql
from backend.deps import CurrentUser, DatabaseDep, TaskId
from backend.errors import TaskNotFound
from backend.main import create_app
from backend.models import TaskOut, tasks

_COLUMNS = [tasks.c[name] for name in TaskOut.model_fields]
_LIST = Sql.of(
    select(*_COLUMNS).where(tasks.c.user_id == bindparam("owner")).order_by(tasks.c.id).limit(1000)
)
_READ = Sql.of(
    select(*_COLUMNS).where(tasks.c.id == bindparam("task"), tasks.c.user_id == bindparam("owner"))
)


def pydantic_app() -> FastAPI:
    app = create_app()
    router = APIRouter()

    @router.get("/api/{user_id}/tasks", response_model=list[TaskOut])
    async def list_tasks(user: CurrentUser, database: DatabaseDep) -> Any:
        return [dict(row) for row in await database.fetch(_LIST, {"owner": user.id})]

    @router.get("/api/{user_id}/tasks/{task_id}", response_model=TaskOut)
    async def read_task(task_id: TaskId, user: CurrentUser, database: DatabaseDep) -> Any:
        row = await database.fetchrow(_READ, {"task": task_id, "owner": user.id})
        if row is None:
            raise TaskNotFound(task_id)
        return dict(row)

    app.router.routes[0:0] = router.routes
    return app
