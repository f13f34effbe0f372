"""The six task endpoints. Each is: validate -> one SQL statement -> response.

Every statement filters by the owner's id, so another user's task is indistinguishable from a
missing one (404) and ownership never costs a second query.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping

from backend.deps import ConnectionDep, OwnerDep, TaskId, enforce_rate_limit
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
_COLUMNS = (
    tasks.c.id,
    tasks.c.user_id,
    tasks.c.title,
    tasks.c.description,
    tasks.c.completed,
    tasks.c.created_at,
    tasks.c.updated_at,
)


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

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    responses=_AUTH_ERRORS,
    dependencies=[Depends(enforce_rate_limit)],
)


def _owned(task_id: int, user_id: str) -> Any:
    return (tasks.c.id == task_id) & (tasks.c.user_id == user_id)


def _task(row: RowMapping | None, task_id: int) -> JsonResponse:
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
    connection: ConnectionDep,
    completed: Annotated[bool | None, Query(description="Only completed (or open) tasks.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = MAX_PAGE,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Start after this id.")] = 0,
) -> Response:
    query: Select[Any] = (
        select(*_COLUMNS)
        .where(tasks.c.user_id == user.id, tasks.c.id > after_id)
        .order_by(tasks.c.id)
        .limit(limit + 1)  # one extra row tells whether another page exists
    )
    if completed is not None:
        query = query.where(tasks.c.completed == completed)
    rows = (await connection.execute(query)).mappings().all()

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
    request: Request, body: CreateTask, user: OwnerDep, connection: ConnectionDep
) -> Response:
    # The user row is provisioned from the token in the same statement (no-op once it exists).
    provision_user = (
        pg_insert(users)
        .values(id=user.id, email=user.email, name=user.name)
        .on_conflict_do_nothing(index_elements=[users.c.id])
        .cte("provision_user")
    )
    statement = (
        insert(tasks)
        .values(user_id=user.id, title=body.title, description=body.description)
        .returning(*_COLUMNS)
        .add_cte(provision_user)
    )
    row = (await connection.execute(statement)).mappings().one()
    location = request.app.url_path_for("read_task", user_id=user.id, task_id=str(row["id"]))
    return JsonResponse(dict(row), status.HTTP_201_CREATED, {"Location": location})


@router.get("/{task_id}", response_model=TaskOut, summary="Read a task", responses=_TASK_ERRORS)
async def read_task(task_id: TaskId, user: OwnerDep, connection: ConnectionDep) -> Response:
    query = select(*_COLUMNS).where(_owned(task_id, user.id))
    return _task((await connection.execute(query)).mappings().one_or_none(), task_id)


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    summary="Update a task",
    description="Changes only the fields present in the body; an empty body is a 422.",
    responses={**_TASK_ERRORS, **_BODY_ERRORS},
)
async def update_task(
    task_id: TaskId, body: UpdateTask, user: OwnerDep, connection: ConnectionDep
) -> Response:
    statement = (
        update(tasks)
        .where(_owned(task_id, user.id))
        .values(**body.model_dump(exclude_unset=True), updated_at=func.now())
        .returning(*_COLUMNS)
    )
    return _task((await connection.execute(statement)).mappings().one_or_none(), task_id)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a task",
    responses=_TASK_ERRORS,
)
async def delete_task(task_id: TaskId, user: OwnerDep, connection: ConnectionDep) -> Response:
    statement = delete(tasks).where(_owned(task_id, user.id)).returning(tasks.c.id)
    if (await connection.execute(statement)).scalar_one_or_none() is None:
        raise TaskNotFound(task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    summary="Toggle a task's completion",
    description="Flips `completed` atomically in the database; concurrent toggles never lose one.",
    responses=_TASK_ERRORS,
)
async def toggle_task(task_id: TaskId, user: OwnerDep, connection: ConnectionDep) -> Response:
    statement = (
        update(tasks)
        .where(_owned(task_id, user.id))
        .values(completed=~tasks.c.completed, updated_at=func.now())
        .returning(*_COLUMNS)
    )
    return _task((await connection.execute(statement)).mappings().one_or_none(), task_id)
