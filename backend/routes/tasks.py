"""The six task endpoints. Each is: validate -> one SQL statement -> response.

Every statement filters by the owner's id, so another user's task is indistinguishable from a
missing one (404) and ownership never costs a second query.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from backend.db import Sql
from backend.deps import DatabaseDep, OwnerDep, TaskId
from backend.errors import TaskNotFound
from backend.models import (
    MAX_ID,
    CreateTask,
    ErrorOut,
    TaskOut,
    UpdateTask,
    ValidationErrorOut,
    tasks,
    users,
)
from backend.responses import JsonResponse

MAX_PAGE = 1000
_COLUMNS = tuple(tasks.c[name] for name in TaskOut.model_fields)  # what a response holds


def _error(description: str, model: type = ErrorOut) -> dict[str, Any]:
    return {"model": model, "description": description}


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("Missing, malformed, expired or untrusted bearer token."),
    403: _error("The path user_id is not the signed-in user."),
    429: _error("RATE_LIMIT_PER_MINUTE spent; retry after `Retry-After` seconds."),
    422: _error("The request does not match the schema.", ValidationErrorOut),
    503: _error("The database is unavailable; retry after `Retry-After` seconds."),
}
_TASK_ERRORS = {**_AUTH_ERRORS, 404: _error("No such task for this user.")}
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _error("Body larger than 64 KiB."),
    415: _error("Body is not application/json."),
}

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=_AUTH_ERRORS)


# The statements: SQLAlchemy Core over the SQLModel tables, compiled once to asyncpg SQL. Each is
# scoped by the owner's id; per request only the parameters change.
_OWNED = (tasks.c.id == bindparam("task_id")) & (tasks.c.user_id == bindparam("owner_id"))
_PAGE = (
    select(*_COLUMNS)
    .where(tasks.c.user_id == bindparam("owner_id"), tasks.c.id > bindparam("after_id"))
    .order_by(tasks.c.id)
    .limit(bindparam("rows"))
)
_READ = Sql.of(select(*_COLUMNS).where(_OWNED))
_CREATE = Sql.of(
    insert(tasks)
    .values(
        user_id=bindparam("owner_id"),
        title=bindparam("new_title"),
        description=bindparam("new_description"),
    )
    .returning(*_COLUMNS)
    # The user row comes from the token, in the same statement (a no-op once it exists).
    .add_cte(
        pg_insert(users)
        .values(
            id=bindparam("owner_id"), email=bindparam("owner_email"), name=bindparam("owner_name")
        )
        .on_conflict_do_nothing(index_elements=[users.c.id])
        .cte("provision_user")
    )
)
_TOGGLE = Sql.of(
    update(tasks)
    .where(_OWNED)
    .values(completed=~tasks.c.completed, updated_at=func.now())
    .returning(*_COLUMNS)
)
_DELETE = Sql.of(delete(tasks).where(_OWNED).returning(tasks.c.id))
_PAGE_BY_STATE = Sql.of(_PAGE.where(tasks.c.completed == bindparam("state")))
_PAGES = {None: Sql.of(_PAGE), True: _PAGE_BY_STATE, False: _PAGE_BY_STATE}


@lru_cache(maxsize=8)
def _update(fields: tuple[str, ...]) -> Sql:
    """PUT changes only the fields sent: one statement per combination, compiled on first use."""
    changes: dict[str, Any] = {field: bindparam(f"set_{field}") for field in fields}
    return Sql.of(
        update(tasks).where(_OWNED).values(**changes, updated_at=func.now()).returning(*_COLUMNS)
    )


def _task(row: Mapping[str, Any] | None, task_id: int) -> JsonResponse:
    if row is None:
        raise TaskNotFound(task_id)
    return JsonResponse(dict(row))


@router.get(
    "",
    response_model=list[TaskOut],
    summary="List the user's tasks",
    description='Ordered by id. Pages with `limit` and `after_id`; a `Link: <...>; rel="next"` '
    "header points at the next page while more remain.",
)
async def list_tasks(
    request: Request,
    user: OwnerDep,
    database: DatabaseDep,
    completed: Annotated[bool | None, Query(description="Only completed (or open) tasks.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = MAX_PAGE,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Start after this id.")] = 0,
) -> Response:
    page = _PAGES[completed]
    # One extra row tells whether another page exists.
    parameters = {"owner_id": user.id, "after_id": after_id, "rows": limit + 1, "state": completed}
    rows = await database.fetch(page, parameters)

    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        next_page = request.url.include_query_params(after_id=rows[-1]["id"])
        headers["Link"] = f'<{next_page.path}?{next_page.query}>; rel="next"'
    return JsonResponse([dict(row) for row in rows], headers=headers)


@router.post(
    "",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses=_BODY_ERRORS,
)
async def create_task(
    request: Request, body: CreateTask, user: OwnerDep, database: DatabaseDep
) -> Response:
    parameters = {"owner_id": user.id, "owner_email": user.email, "owner_name": user.name}
    parameters |= {"new_title": body.title, "new_description": body.description}
    row = await database.fetchrow(_CREATE, parameters)
    assert row is not None  # INSERT ... RETURNING returns the row it inserted
    location = request.app.url_path_for("read_task", user_id=user.id, task_id=str(row["id"]))
    return JsonResponse(dict(row), status.HTTP_201_CREATED, {"Location": location})


@router.get("/{task_id}", response_model=TaskOut, summary="Read a task", responses=_TASK_ERRORS)
async def read_task(task_id: TaskId, user: OwnerDep, database: DatabaseDep) -> Response:
    parameters = {"task_id": task_id, "owner_id": user.id}
    return _task(await database.fetchrow(_READ, parameters), task_id)


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    summary="Update a task",
    description="Changes only the fields present in the body; an empty body is a 422.",
    responses={**_TASK_ERRORS, **_BODY_ERRORS},
)
async def update_task(
    task_id: TaskId, body: UpdateTask, user: OwnerDep, database: DatabaseDep
) -> Response:
    changes = body.model_dump(exclude_unset=True)
    parameters = {"task_id": task_id, "owner_id": user.id}
    parameters |= {f"set_{field}": value for field, value in changes.items()}
    return _task(await database.fetchrow(_update(tuple(sorted(changes))), parameters), task_id)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a task",
    responses=_TASK_ERRORS,
)
async def delete_task(task_id: TaskId, user: OwnerDep, database: DatabaseDep) -> Response:
    parameters = {"task_id": task_id, "owner_id": user.id}
    if await database.fetchrow(_DELETE, parameters) is None:
        raise TaskNotFound(task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    summary="Toggle a task's completion",
    description="Flips `completed` atomically in the database; concurrent toggles never lose one.",
    responses=_TASK_ERRORS,
)
async def toggle_task(task_id: TaskId, user: OwnerDep, database: DatabaseDep) -> Response:
    parameters = {"task_id": task_id, "owner_id": user.id}
    return _task(await database.fetchrow(_TOGGLE, parameters), task_id)
