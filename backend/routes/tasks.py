"""The six task endpoints. Each is: validate -> one SQL statement -> response.

Every statement filters by the owner's id, so another user's task is indistinguishable from a
missing one (404) and ownership never costs a second query. Writes with `If-Match` carry the
accepted versions in the same WHERE (backend/conditional.py); creates and toggles with an
`Idempotency-Key` run inside backend/idempotency.py's transaction. Only a write that found no
row asks a second question: was it missing (404), or ruled out by If-Match (412)?
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import BigInteger, any_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ColumnElement

from backend import idempotency
from backend.conditional import (
    CACHE_CONTROL,
    if_match_versions,
    if_none_match,
    not_modified,
    page_etag,
    task_etag,
)
from backend.db import Sql, Statements
from backend.deps import DatabaseDep, OwnerDep, TaskId
from backend.errors import ApiError, PreconditionFailed, TaskNotFound
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
from backend.responses import JsonResponse, dumps

MAX_PAGE = 1000
_COLUMNS = tuple(tasks.c[name] for name in TaskOut.model_fields)  # what a response holds
_TASK_COLUMNS = (*_COLUMNS, tasks.c.version)  # a single task's response carries its ETag


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
_NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Unchanged since the ETag in `If-None-Match`; no body."},
    400: _error("`If-None-Match` is not `*` or a list of entity tags."),
}
_CONDITIONAL_WRITE: dict[int | str, dict[str, Any]] = {
    400: _error("A malformed `If-Match` (or `Idempotency-Key`) header."),
    412: _error("The task changed since the ETag in `If-Match`; nothing was changed."),
}
_RETRIABLE_WRITE: dict[int | str, dict[str, Any]] = {
    400: _error("A malformed `Idempotency-Key` (or `If-Match`) header."),
    409: _error("A request with this `Idempotency-Key` is still running; retry shortly."),
    422: _error(
        "The request does not match the schema (`validation_error`), or its "
        "`Idempotency-Key` was used for another request (`idempotency_key_reused`).",
        ValidationErrorOut | ErrorOut,  # type: ignore[arg-type]
    ),
}


def _header(name: str, description: str) -> dict[str, Any]:
    """An optional request header, for OpenAPI only: routes read these headers themselves, so a
    request without them pays for no FastAPI parameter."""
    parameter = {"name": name, "in": "header", "required": False, "description": description}
    return parameter | {"schema": {"type": "string"}}


_IF_NONE_MATCH = _header("If-None-Match", "ETags the client has; 304 while one still matches.")
_IF_MATCH = _header(
    "If-Match", "Change the task only while its ETag is one of these (`*`: while it exists)."
)
_IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    "A unique key per intended write (e.g. a UUID), sent again with every retry of it: the "
    "write happens once, and retries get its stored response. Kept for at least 24 hours.",
)
_ETAG = {"ETag": {"description": "The task's strong entity tag.", "schema": {"type": "string"}}}
_TASK_OK: dict[int | str, dict[str, Any]] = {200: {"headers": _ETAG}}

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=_AUTH_ERRORS)


# The statements: SQLAlchemy Core over the SQLModel tables, compiled once to asyncpg SQL. Each is
# scoped by the owner's id; per request only the parameters change.
_OWNED = (tasks.c.id == bindparam("task_id")) & (tasks.c.user_id == bindparam("owner_id"))
# If-Match: the write happens only while the task's version is one the client has seen.
_MATCHED = _OWNED & (tasks.c.version == any_(bindparam("versions", type_=ARRAY(BigInteger))))
_PAGE = (
    select(*_COLUMNS)
    .where(tasks.c.user_id == bindparam("owner_id"), tasks.c.id > bindparam("after_id"))
    .order_by(tasks.c.id)
    .limit(bindparam("rows"))
)
_READ = Sql.of(select(*_TASK_COLUMNS).where(_OWNED))
_CREATE = Sql.of(
    insert(tasks)
    .values(
        user_id=bindparam("owner_id"),
        title=bindparam("new_title"),
        description=bindparam("new_description"),
    )
    .returning(*_TASK_COLUMNS)
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
_CHANGED = {"updated_at": func.now(), "version": tasks.c.version + 1}  # part of every change
_WHERE = {False: _OWNED, True: _MATCHED}  # by "is there an If-Match to check?"


def _toggle(where: ColumnElement[bool]) -> Sql:
    change = update(tasks).where(where).values(completed=~tasks.c.completed, **_CHANGED)
    return Sql.of(change.returning(*_TASK_COLUMNS))


_TOGGLE = {guarded: _toggle(where) for guarded, where in _WHERE.items()}
_DELETE = {
    guarded: Sql.of(delete(tasks).where(where).returning(tasks.c.id))
    for guarded, where in _WHERE.items()
}
_PAGE_BY_STATE = Sql.of(_PAGE.where(tasks.c.completed == bindparam("state")))
_PAGES = {None: Sql.of(_PAGE), True: _PAGE_BY_STATE, False: _PAGE_BY_STATE}


@lru_cache(maxsize=16)
def _update(fields: tuple[str, ...], guarded: bool) -> Sql:
    """PUT changes only the fields sent: one statement per combination, compiled on first use."""
    changes: dict[str, Any] = {field: bindparam(f"set_{field}") for field in fields}
    change = update(tasks).where(_WHERE[guarded]).values(**changes, **_CHANGED)
    return Sql.of(change.returning(*_TASK_COLUMNS))


def _task(
    row: Mapping[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    task = dict(row)
    headers = {**(headers or {}), "ETag": task_etag(task["id"], task.pop("version"))}
    return JsonResponse(task, status_code, headers)


async def _refusal(db: Statements, parameters: Mapping[str, Any]) -> ApiError:
    """Why a write found no row: If-Match ruled out a task that exists (412), or no such task
    for this user (404). Asked only after the write found nothing."""
    task_id = parameters["task_id"]
    if parameters["versions"] is not None and await db.fetchrow(_READ, parameters) is not None:
        return PreconditionFailed(task_id)
    return TaskNotFound(task_id)


@router.get(
    "",
    response_model=list[TaskOut],
    summary="List the user's tasks",
    description='Ordered by id. Pages with `limit` and `after_id`; a `Link: <...>; rel="next"` '
    "header points at the next page while more remain. The `ETag` changes whenever the page "
    "would; send it back in `If-None-Match` for a 304 while nothing changed.",
    responses=_NOT_MODIFIED,
    openapi_extra={"parameters": [_IF_NONE_MATCH]},
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
    wanted = if_none_match(request.headers)
    # One extra row tells whether another page exists.
    parameters = {"owner_id": user.id, "after_id": after_id, "rows": limit + 1, "state": completed}
    rows = await database.fetch(page, parameters)

    link = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_page = request.url.include_query_params(after_id=rows[-1]["id"])
        link = f'<{next_page.path}?{next_page.query}>; rel="next"'
    body = dumps([dict(row) for row in rows])
    etag = page_etag(body, link)
    if unchanged := not_modified(wanted, etag):
        return unchanged
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL} | ({"Link": link} if link else {})
    return Response(body, headers=headers, media_type=JsonResponse.media_type)


@router.post(
    "",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    description="Send an `Idempotency-Key` to make retrying safe: the task is created once.",
    responses={201: {"headers": _ETAG}, **_BODY_ERRORS, **_RETRIABLE_WRITE},
    openapi_extra={"parameters": [_IDEMPOTENCY_KEY]},
)
async def create_task(
    request: Request, body: CreateTask, user: OwnerDep, database: DatabaseDep
) -> Response:
    parameters = {"owner_id": user.id, "owner_email": user.email, "owner_name": user.name}
    parameters |= {"new_title": body.title, "new_description": body.description}

    async def create(db: Statements) -> Response:
        row = await db.fetchrow(_CREATE, parameters)
        assert row is not None  # INSERT ... RETURNING returns the row it inserted
        location = request.app.url_path_for("read_task", user_id=user.id, task_id=str(row["id"]))
        return _task(row, status.HTTP_201_CREATED, {"Location": location})

    return await idempotency.once(request, database, user.id, body, create)


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    summary="Read a task",
    description="Send the `ETag` back in `If-None-Match` for a 304 while the task is unchanged.",
    responses={**_TASK_OK, **_TASK_ERRORS, **_NOT_MODIFIED},
    openapi_extra={"parameters": [_IF_NONE_MATCH]},
)
async def read_task(
    request: Request, task_id: TaskId, user: OwnerDep, database: DatabaseDep
) -> Response:
    wanted = if_none_match(request.headers)
    row = await database.fetchrow(_READ, {"task_id": task_id, "owner_id": user.id})
    if row is None:
        raise TaskNotFound(task_id)
    if unchanged := not_modified(wanted, task_etag(task_id, row["version"])):
        return unchanged
    return _task(row, headers={"Cache-Control": CACHE_CONTROL})


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    summary="Update a task",
    description="Changes only the fields present in the body; an empty body is a 422. With "
    "`If-Match`, only while the task is as the client last saw it.",
    responses={**_TASK_OK, **_TASK_ERRORS, **_BODY_ERRORS, **_CONDITIONAL_WRITE},
    openapi_extra={"parameters": [_IF_MATCH]},
)
async def update_task(
    request: Request, task_id: TaskId, body: UpdateTask, user: OwnerDep, database: DatabaseDep
) -> Response:
    changes = body.model_dump(exclude_unset=True)
    versions = if_match_versions(request.headers, task_id)
    parameters = {"task_id": task_id, "owner_id": user.id, "versions": versions}
    parameters |= {f"set_{field}": value for field, value in changes.items()}
    row = await database.fetchrow(_update(tuple(sorted(changes)), versions is not None), parameters)
    if row is None:
        raise await _refusal(database, parameters)
    return _task(row)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a task",
    description="With `If-Match`, only while the task is as the client last saw it.",
    responses={**_TASK_ERRORS, **_CONDITIONAL_WRITE},
    openapi_extra={"parameters": [_IF_MATCH]},
)
async def delete_task(
    request: Request, task_id: TaskId, user: OwnerDep, database: DatabaseDep
) -> Response:
    versions = if_match_versions(request.headers, task_id)
    parameters = {"task_id": task_id, "owner_id": user.id, "versions": versions}
    if await database.fetchrow(_DELETE[versions is not None], parameters) is None:
        raise await _refusal(database, parameters)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    summary="Toggle a task's completion",
    description="Flips `completed` atomically in the database; concurrent toggles never lose "
    "one. A toggle is not idempotent: send an `Idempotency-Key` to retry it safely, and "
    "`If-Match` to flip only the state the client saw.",
    responses={**_TASK_OK, **_TASK_ERRORS, **_CONDITIONAL_WRITE, **_RETRIABLE_WRITE},
    openapi_extra={"parameters": [_IF_MATCH, _IDEMPOTENCY_KEY]},
)
async def toggle_task(
    request: Request, task_id: TaskId, user: OwnerDep, database: DatabaseDep
) -> Response:
    versions = if_match_versions(request.headers, task_id)
    parameters = {"task_id": task_id, "owner_id": user.id, "versions": versions}

    async def toggle(db: Statements) -> Response:
        row = await db.fetchrow(_TOGGLE[versions is not None], parameters)
        if row is None:
            raise await _refusal(db, parameters)
        return _task(row)

    return await idempotency.once(request, database, user.id, None, toggle)
