"""Every SQL statement the task endpoints run, behind one typed async function per operation.

The statements are SQLAlchemy Core over the SQLModel tables, compiled once at import to
asyncpg's `$n` form (`Sql`); per request only the parameters change. Each is scoped by the
owner's id in its WHERE, so another user's task is indistinguishable from a missing one and
ownership never costs a second query. If-Match / If-None-Match are checked in the same WHERE
(`Preconditions`), so of two concurrent writes from one ETag exactly one wins. A list page's
statement also writes each task's response JSON, byte for byte what backend/responses.py's
encoder writes for the row (tests/test_tasks.py pins it): a page needs no Python object per field.

Routes call these and never build SQL or name bind parameters; this module knows nothing of
HTTP. `db` is the pool (`Database`: each statement in autocommit) or a `Transaction`.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Text,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from backend.auth import AuthUser
from backend.conditional import Preconditions
from backend.db import Database, Executor, Row, Sql
from backend.models import TaskOut, tasks, users

COLUMNS = tuple(tasks.c[name] for name in TaskOut.model_fields)  # what a response holds
TASK_JSON_OVERHEAD = 200  # a task's JSON besides its title and description, user id included
# A single task's response carries its ETag, made of its version.
_TASK_COLUMNS = (*COLUMNS, tasks.c.version)

_VERSIONS = ARRAY(BigInteger)
_OWNED = (tasks.c.id == bindparam("task_id")) & (tasks.c.user_id == bindparam("owner_id"))
# NULL means "not asked": one statement serves requests with and without the headers, and the
# (user_id, id) index finds the row either way; the versions only filter that one row.
_GUARDED = (
    _OWNED
    & or_(
        bindparam("versions", type_=_VERSIONS).is_(None),
        tasks.c.version == any_(bindparam("versions", type_=_VERSIONS)),
    )
    & ~func.coalesce(tasks.c.version == any_(bindparam("excluded", type_=_VERSIONS)), false())
)
_CHANGED = {"updated_at": func.now(), "version": tasks.c.version + 1}  # part of every change

# What a task takes in a page, about: its two texts in bytes (JSON escapes aside: a quote or a
# line break is two bytes there, a rare control character six) and the rest (keys, id, user
# id, flag, timestamps). Read from the row's header, not its contents: cheap for any text.
_TEXT_BYTES = (
    func.octet_length(tasks.c.title)
    + func.coalesce(func.octet_length(tasks.c.description), 0)
    + TASK_JSON_OVERHEAD
)


def _sql_text(value: str) -> ColumnElement[str]:
    """A text constant written into the statement (not a parameter); `value` has no quote."""
    return literal_column(f"'{value}'", Text)


def _json_value(column: Any) -> ColumnElement[str]:
    """`column` as orjson writes it in a response (OPT_UTC_Z): strings escaped by to_json,
    which escapes exactly what orjson does; timestamps in UTC with a `Z`, the fraction only
    when it is not zero."""
    if isinstance(column.type, DateTime):
        utc = func.timezone(_sql_text("UTC"), column)
        written = func.to_char(utc, _sql_text('YYYY-MM-DD"T"HH24:MI:SS.US'))
        whole_seconds = func.replace(written, _sql_text(".000000"), _sql_text(""))
        value = _sql_text('"') + whole_seconds + _sql_text('Z"')
    elif isinstance(column.type, BigInteger | Boolean):
        value = cast(column, Text)
    else:
        value = cast(func.to_json(column), Text)
    return func.coalesce(value, _sql_text("null")) if column.nullable else value


def _json_object(columns: tuple[Any, ...]) -> ColumnElement[bytes]:
    """The row's `columns` as one compact JSON object, keys in their order, in UTF-8."""
    parts: list[ColumnElement[str]] = []
    for position, column in enumerate(columns):
        parts += [_sql_text(("," if position else "{") + f'"{column.name}":'), _json_value(column)]
    return func.convert_to(reduce(operator.add, [*parts, _sql_text("}")]), _sql_text("UTF8"))


_FIRST_ROWS = (
    select(
        *COLUMNS,
        func.sum(_TEXT_BYTES).over(order_by=tasks.c.id).label("page_bytes"),
        _TEXT_BYTES.label("task_bytes"),
    )
    .where(
        tasks.c.user_id == bindparam("owner_id"),
        tasks.c.id > bindparam("after_id"),
        or_(
            bindparam("completed", type_=Boolean).is_(None),
            tasks.c.completed == bindparam("completed", type_=Boolean),
        ),
    )
    .order_by(tasks.c.id)
    .limit(bindparam("rows"))
    .subquery()
)
# The rows that start within the byte budget: those that fit, and the first that does not,
# which (like the row past `rows`) says that another page follows.
# Each task as its JSON, built by PostgreSQL (only for the rows the page keeps): the page is
# then its rows' bytes joined, no Python object per field, byte for byte what orjson writes.
_PAGE = Sql.of(
    select(
        _FIRST_ROWS.c.id,
        _json_object(tuple(_FIRST_ROWS.c[column.name] for column in COLUMNS)).label("task_json"),
        _FIRST_ROWS.c.page_bytes,
    )
    .where(_FIRST_ROWS.c.page_bytes - _FIRST_ROWS.c.task_bytes < bindparam("budget"))
    .order_by(_FIRST_ROWS.c.id)
)
_READ = Sql.of(select(*_TASK_COLUMNS).where(_OWNED))
_EXISTS = Sql.of(select(tasks.c.id).where(_OWNED))
_CREATE = Sql.of(
    insert(tasks)
    .values(
        user_id=bindparam("owner_id"),
        title=bindparam("title"),
        description=bindparam("description"),
    )
    .returning(*_TASK_COLUMNS)
    # The user row comes from the token, in the same statement (a no-op once it exists).
    .add_cte(
        pg_insert(users)
        .values(id=bindparam("owner_id"), email=bindparam("email"), name=bindparam("name"))
        .on_conflict_do_nothing(index_elements=[users.c.id])
        .cte("provision_user")
    )
)
# PUT: omitted fields keep their value. A title or completed of NULL means "not sent" (neither
# may be null); description may be set to null, so whether it was sent is a parameter of its own.
_UPDATE = Sql.of(
    sql_update(tasks)
    .where(_GUARDED)
    .values(
        title=func.coalesce(bindparam("title"), tasks.c.title),
        completed=func.coalesce(bindparam("completed", type_=Boolean), tasks.c.completed),
        description=case(
            (bindparam("set_description", type_=Boolean), bindparam("description")),
            else_=tasks.c.description,
        ),
        **_CHANGED,
    )
    .returning(*_TASK_COLUMNS)
)
_TOGGLE = Sql.of(
    sql_update(tasks)
    .where(_GUARDED)
    .values(completed=~tasks.c.completed, **_CHANGED)
    .returning(*_TASK_COLUMNS)
)
_DELETE = Sql.of(sql_delete(tasks).where(_GUARDED).returning(tasks.c.id))


def _guard(owner_id: str, task_id: int, conditions: Preconditions) -> dict[str, Any]:
    return {
        "owner_id": owner_id,
        "task_id": task_id,
        "versions": conditions.versions,
        "excluded": conditions.excluded,
    }


async def list_page(
    db: Database,
    owner_id: str,
    *,
    after_id: int,
    rows: int,
    completed: bool | None,
    budget: int,
) -> list[Row]:
    """The owner's tasks with ids above `after_id`, by id (only those with this `completed`
    state unless it is None): at most `rows`, and only as many as start within `budget` bytes
    of text. Each row is the task's `id`, its response JSON (`task_json`, UTF-8 bytes) and
    `page_bytes`, the page's text up to and including it."""
    parameters = {"owner_id": owner_id, "after_id": after_id, "rows": rows, "completed": completed}
    return await db.fetch(_PAGE, parameters | {"budget": budget})


async def read(db: Executor, owner_id: str, task_id: int) -> Row | None:
    return await db.fetchrow(_READ, {"owner_id": owner_id, "task_id": task_id})


async def exists(db: Executor, owner_id: str, task_id: int) -> bool:
    return await db.fetchrow(_EXISTS, {"owner_id": owner_id, "task_id": task_id}) is not None


async def create(db: Executor, owner: AuthUser, title: str, description: str | None) -> Row:
    """A new task of `owner`, whose user row is made from the token's claims if it is new."""
    parameters = {"owner_id": owner.id, "email": owner.email, "name": owner.name}
    row = await db.fetchrow(_CREATE, parameters | {"title": title, "description": description})
    assert row is not None  # INSERT ... RETURNING returns the row it inserted
    return row


async def update(
    db: Executor,
    owner_id: str,
    task_id: int,
    conditions: Preconditions,
    *,
    title: str | None = None,
    completed: bool | None = None,
    description: str | None = None,
    set_description: bool = False,
) -> Row | None:
    """The task with the given fields changed (None: unchanged; `description` only when
    `set_description`), or None when it is not the owner's or `conditions` rule it out."""
    changes = {"title": title, "completed": completed}
    changes |= {"description": description, "set_description": set_description}
    return await db.fetchrow(_UPDATE, _guard(owner_id, task_id, conditions) | changes)


async def toggle(
    db: Executor, owner_id: str, task_id: int, conditions: Preconditions
) -> Row | None:
    """The task with `completed` flipped, atomically, or None (see `update`)."""
    return await db.fetchrow(_TOGGLE, _guard(owner_id, task_id, conditions))


async def delete(db: Executor, owner_id: str, task_id: int, conditions: Preconditions) -> bool:
    """Whether the task was deleted (False: not the owner's, or `conditions` ruled it out)."""
    return await db.fetchrow(_DELETE, _guard(owner_id, task_id, conditions)) is not None
