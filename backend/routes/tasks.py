"""The six task endpoints. Each is: validate -> one call of backend/crud.py -> response.

The SQL, owner-scoped in every WHERE, lives in crud.py; here are the HTTP parts: status codes,
headers (ETag, Location, Link), and the OpenAPI description. Creates and toggles with an
`Idempotency-Key` run inside backend/idempotency.py's transaction. Only a write that found no
row asks a second question: was it missing (404), or ruled out by a precondition (412)?
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response, status

from backend import crud, idempotency
from backend.conditional import (
    CACHE_CONTROL,
    Preconditions,
    if_none_match,
    not_modified,
    page_etag,
    preconditions,
    task_etag,
)
from backend.db import Executor, Row
from backend.deps import (
    CurrentUser,
    TaskId,
    UserId,
    database_of,
    parameters,
    query_of,
    task_id_of,
)
from backend.errors import (
    ApiError,
    DatabaseBusy,
    DatabaseUnavailable,
    Forbidden,
    HeadersTooLarge,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    InvalidPrecondition,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    TaskNotFound,
    TokenError,
    TokenExpired,
    TokenMissing,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedMediaType,
    documented,
)
from backend.models import CreateTask, ListQuery, TaskOut, UpdateTask
from backend.responses import JsonResponse

# A page also ends before its JSON passes this size (a user's tasks can be long: 1,000 of them
# up to 13 MB); the Link header continues it, so following Link still yields every task once.
MAX_PAGE_BYTES = 512 * 1024


# Every task endpoint can answer these; each endpoint adds its own below.
_ANY_REQUEST = documented(
    HeadersTooLarge,
    TokenMissing,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    Forbidden,
    InvalidRequest,
    RateLimited,
    DatabaseUnavailable,
    DatabaseBusy,
    Overloaded,
)
_BODY = (PayloadTooLarge, UnsupportedMediaType)
_KEYED = (InvalidIdempotencyKey, IdempotencyKeyInFlight, InvalidRequest, IdempotencyKeyReused)


def _sent(headers: dict[str, str], description: str | None = None) -> dict[str, Any]:
    """A success response's headers (name -> what it is), for OpenAPI."""
    entry: dict[str, Any] = {
        "headers": {
            name: {"description": meaning, "schema": {"type": "string"}}
            for name, meaning in headers.items()
        }
    }
    return entry | ({"description": description} if description else {})


_ETAG = {"ETag": "The task's strong entity tag: send it in `If-Match` or `If-None-Match`."}
_PAGE_ETAG = {"ETag": "The page's strong entity tag: send it in `If-None-Match`."}
_REPLAYED = {"Idempotent-Replayed": "`true` on a retry's stored response (`Idempotency-Key`)."}
_NOT_MODIFIED = "Unchanged since the ETag in `If-None-Match`; no body."


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
router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=_ANY_REQUEST)


# The parameters the routes read themselves (backend/deps.py says why), in OpenAPI as FastAPI
# writes them from these signatures. The functions are never called.
def _declares_path(user_id: UserId, task_id: TaskId) -> None: ...
def _declares_list_query(query: Annotated[ListQuery, Query()]) -> None: ...


_USER_ID, _TASK_ID = parameters("/{user_id}/{task_id}", _declares_path)
_LIST_QUERY = parameters("/", _declares_list_query)
_ALL_TASKS = ListQuery()  # the list's query when none is sent


def _task(row: Row, status_code: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    task = dict(row)
    headers = {**(headers or {}), "ETag": task_etag(task["id"], task.pop("version"))}
    return JsonResponse(task, status_code, headers)


def _json_array(page: list[Row]) -> bytes:
    """The page's body: its tasks' JSON (crud.list_page writes each) as one array."""
    return b"[" + b",".join(row["task_json"] for row in page) + b"]"


def _first_that_fit(page: list[Row], budget: int) -> list[Row]:
    """The longest start of `page` whose JSON array fits in `budget` bytes (one task at least)."""
    ends = list(accumulate(len(row["task_json"]) + 1 for row in page))  # each with its comma
    return page[: max(1, bisect_right(ends, budget - 1))]  # the array's brackets: 2 bytes


def _path(request: Request, route: str, user_id: str, **parameters: str) -> str:
    """A URL path of this API, the user id percent-encoded: `sub` may be any string."""
    return str(request.app.url_path_for(route, user_id=quote(user_id, safe=""), **parameters))


async def _refusal(
    db: Executor, owner_id: str, task_id: int, conditions: Preconditions
) -> ApiError:
    """Why a write found no row: a precondition ruled out a task that exists (412), or no such
    task for this user (404). Asked only after the write found nothing."""
    if conditions.asked and await crud.exists(db, owner_id, task_id):
        return PreconditionFailed(task_id)
    return TaskNotFound(task_id)


@router.get(
    "",
    response_model=list[TaskOut],
    summary="List the user's tasks",
    description='Ordered by id. Pages with `limit` and `after_id`; a `Link: <...>; rel="next"` '
    "header points at the next page while more remain. A page also ends before its JSON "
    "passes 512 KiB, so it may hold fewer than `limit` tasks: follow `Link`. The `ETag` "
    "changes whenever the page would; send it back in `If-None-Match` for a 304 while "
    "nothing changed.",
    responses={
        200: _sent(_PAGE_ETAG | {"Link": '`<...>; rel="next"`: the next page, while more remain.'}),
        304: _sent(_PAGE_ETAG, _NOT_MODIFIED),
        **documented(InvalidPrecondition),
    },
    openapi_extra={"parameters": [_USER_ID, *_LIST_QUERY, _IF_NONE_MATCH]},
)
async def list_tasks(request: Request, user: CurrentUser) -> Response:
    asked = query_of(request, ListQuery, _ALL_TASKS)
    database = database_of(request)
    wanted = if_none_match(request.headers)
    # One row more than the page holds (past `limit`, or past the byte budget) says that
    # another page follows.
    rows = await crud.list_page(
        database,
        user.id,
        after_id=asked.after_id,
        rows=asked.limit + 1,
        completed=asked.completed,
        budget=MAX_PAGE_BYTES,
    )
    more = len(rows) > asked.limit or (len(rows) > 1 and rows[-1]["page_bytes"] > MAX_PAGE_BYTES)
    page = rows[:-1] if more else rows
    body = _json_array(page)
    if len(body) > MAX_PAGE_BYTES and len(page) > 1:  # JSON's escapes outgrew the text
        page = _first_that_fit(page, MAX_PAGE_BYTES)
        body, more = _json_array(page), True
    link = None
    if more:
        query = request.url.include_query_params(after_id=page[-1]["id"]).query
        link = f'<{_path(request, "list_tasks", user.id)}?{query}>; rel="next"'
    etag = page_etag(body, link)
    if unchanged := not_modified(wanted, etag):
        return unchanged
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL} | ({"Link": link} if link else {})
    return JsonResponse(body, headers=headers)


@router.post(
    "",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    description="Send an `Idempotency-Key` to make retrying safe: the task is created once.",
    responses={
        201: _sent({"Location": "The new task's URL."} | _ETAG | _REPLAYED),
        **documented(*_BODY, *_KEYED),
    },
    openapi_extra={"parameters": [_USER_ID, _IDEMPOTENCY_KEY]},
)
async def create_task(request: Request, body: CreateTask, user: CurrentUser) -> Response:
    database = database_of(request)

    async def create(db: Executor) -> Response:
        row = await crud.create(db, user, body.title, body.description)
        location = _path(request, "read_task", user.id, task_id=str(row["id"]))
        return _task(row, status.HTTP_201_CREATED, {"Location": location})

    return await idempotency.once(request, database, user.id, "create", body, create)


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    summary="Read a task",
    description="Send the `ETag` back in `If-None-Match` for a 304 while the task is unchanged.",
    responses={
        200: _sent(_ETAG),
        304: _sent(_ETAG, _NOT_MODIFIED),
        **documented(InvalidPrecondition, TaskNotFound),
    },
    openapi_extra={"parameters": [_TASK_ID, _USER_ID, _IF_NONE_MATCH]},
)
async def read_task(request: Request, user: CurrentUser) -> Response:
    task_id = task_id_of(request)
    database = database_of(request)
    wanted = if_none_match(request.headers)
    row = await crud.read(database, user.id, task_id)
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
    responses={
        200: _sent(_ETAG),
        **documented(*_BODY, InvalidPrecondition, TaskNotFound, PreconditionFailed),
    },
    openapi_extra={"parameters": [_USER_ID, _IF_MATCH]},
)
async def update_task(
    request: Request, task_id: TaskId, body: UpdateTask, user: CurrentUser
) -> Response:
    database = database_of(request)
    conditions = preconditions(request.headers, task_id)
    row = await crud.update(
        database,
        user.id,
        task_id,
        conditions,
        title=body.title,
        completed=body.completed,
        description=body.description,
        set_description="description" in body.model_fields_set,
    )
    if row is None:
        raise await _refusal(database, user.id, task_id, conditions)
    return _task(row)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a task",
    description="With `If-Match`, only while the task is as the client last saw it.",
    responses=documented(InvalidPrecondition, TaskNotFound, PreconditionFailed),
    openapi_extra={"parameters": [_TASK_ID, _USER_ID, _IF_MATCH]},
)
async def delete_task(request: Request, user: CurrentUser) -> Response:
    task_id = task_id_of(request)
    database = database_of(request)
    conditions = preconditions(request.headers, task_id)
    if not await crud.delete(database, user.id, task_id, conditions):
        raise await _refusal(database, user.id, task_id, conditions)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/{task_id}/complete",
    response_model=TaskOut,
    summary="Toggle a task's completion",
    description="Flips `completed` atomically in the database; concurrent toggles never lose "
    "one. A toggle is not idempotent: send an `Idempotency-Key` to retry it safely, and "
    "`If-Match` to flip only the state the client saw.",
    responses={
        200: _sent(_ETAG | _REPLAYED),
        **documented(InvalidPrecondition, *_KEYED, TaskNotFound, PreconditionFailed),
    },
    openapi_extra={"parameters": [_TASK_ID, _USER_ID, _IF_MATCH, _IDEMPOTENCY_KEY]},
)
async def toggle_task(request: Request, user: CurrentUser) -> Response:
    task_id = task_id_of(request)
    database = database_of(request)
    conditions = preconditions(request.headers, task_id)

    async def toggle(db: Executor) -> Response:
        row = await crud.toggle(db, user.id, task_id, conditions)
        if row is None:
            raise await _refusal(db, user.id, task_id, conditions)
        return _task(row)

    return await idempotency.once(request, database, user.id, f"toggle {task_id}", None, toggle)
