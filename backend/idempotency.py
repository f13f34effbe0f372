"""Safe retries of non-idempotent writes with `Idempotency-Key` (IETF httpapi draft).

A create or toggle sent with a key runs in one transaction that first claims the key (user, key,
fingerprint of the request), then writes, then stores the response next to the key. So a key is
never kept without its write, nor a write without its key, whatever crashes when.

- Same user, key and request again: the stored response, byte for byte, with
  `Idempotent-Replayed: true`; nothing is written.
- Same key, another request (endpoint, task or body): 422 `idempotency_key_reused`.
- Same key while the first is still running: the claim waits on the first transaction's
  uncommitted row, then replays its response (or claims the key, if the first failed); after
  IDEMPOTENCY_WAIT_SECONDS it gives up with 409 `idempotency_key_in_flight`.
- Keys are the user's own: the primary key is (user_id, key).
- Only successes are stored: a request that fails (404, 412, 503...) leaves no key behind, so
  its retry is judged afresh.

Keys are kept at least `KEY_TTL` and swept by the writes that store new ones, a few at a time
(no separate process). All of it is plain transactions: safe behind PgBouncer's transaction mode.
This module must not be on the path of requests that send no key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import orjson
from pydantic import BaseModel
from sqlalchemy import (
    Interval,
    LargeBinary,
    String,
    Text,
    bindparam,
    func,
    null,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from backend.db import Database, Executor, Sql
from backend.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidIdempotencyKey
from backend.models import IDEMPOTENCY_KEY_MAX, idempotency_keys

KEY_TTL = timedelta(hours=24)
SWEEP_BATCH = 10  # expired keys removed per stored key: the table cannot outgrow a day of keys
REPLAYED = "Idempotent-Replayed"
_STORED_HEADERS = ("Location", "ETag")

# A bare key (what most clients send) or an RFC 8941 string, as the draft defines the field.
_BARE = re.compile(r"[\x21\x23-\x7e][\x20-\x7e]*[\x21-\x7e]|[\x21\x23-\x7e]")
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')

Write = Callable[[Executor], Awaitable[Response]]

_key = idempotency_keys.c
_THIS_KEY = (_key.user_id == bindparam("owner_id")) & (_key.key == bindparam("key"))
# The claim's SELECT sets how long it may wait on a concurrent claim of the same key; the
# setting is made when the row is produced, before the insert can meet the other claim. The
# bound is for the claim alone: RETURNING, computed once the row is in, resets it (NULL: the
# session's own value), so the write after it waits for locks as any write does.
_CLAIM = Sql.of(
    pg_insert(idempotency_keys)
    .from_select(
        ["user_id", "key", "fingerprint"],
        select(
            bindparam("owner_id", type_=String),
            bindparam("key", type_=String),
            bindparam("fingerprint", type_=LargeBinary),
        ).where(
            func.set_config("lock_timeout", bindparam("wait", type_=Text), true()).is_not(None)
        ),
    )
    .on_conflict_do_nothing(index_elements=[_key.user_id, _key.key])
    .returning(_key.created_at, func.set_config("lock_timeout", null(), true()))
)
_STORED = Sql.of(select(_key.fingerprint, _key.status, _key.headers, _key.body).where(_THIS_KEY))
_EXPIRED = (
    select(_key.user_id, _key.key)
    .where(_key.created_at < func.now() - bindparam("ttl", type_=Interval))
    .order_by(_key.created_at)
    .limit(SWEEP_BATCH)
    .with_for_update(skip_locked=True)  # two sweeps at once take different keys
)
_STORE = Sql.of(
    update(idempotency_keys)
    .where(_THIS_KEY)
    .values(status=bindparam("status"), headers=bindparam("headers"), body=bindparam("body"))
    .add_cte(
        idempotency_keys.delete()
        .where(tuple_(_key.user_id, _key.key).in_(_EXPIRED.scalar_subquery()))
        .cte("swept")
    )
)


def key_of(headers: Headers) -> str | None:
    """The request's Idempotency-Key, None without one; 400 when it is not a usable key."""
    values = headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey("Send one Idempotency-Key header, not several.")
    value = values[0]
    if quoted := _QUOTED.fullmatch(value):
        value = re.sub(r"\\(.)", r"\1", quoted[1])
    elif not _BARE.fullmatch(value):
        value = ""
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters, "
            "e.g. a UUID."
        )
    return value


def fingerprint(operation: str, body: BaseModel | None) -> bytes:
    """What makes two requests the same one: the operation as routed (`toggle 5`: `/tasks/05`
    is task 5 too) and the body as validated (the same fields in another order or spacing are
    the same request)."""
    digest = hashlib.sha256(f"{operation}\n".encode())
    if body is not None:
        digest.update(body.model_dump_json().encode())  # fields in declaration order
    return digest.digest()


async def once(
    request: Request,
    database: Database,
    owner_id: str,
    operation: str,
    body: BaseModel | None,
    write: Write,
) -> Response:
    """`write`'s response. Without an Idempotency-Key, `write` runs as any request does; with
    one, at most once per (owner, key), and a retry gets the stored response. `operation`
    names the endpoint and its validated path parameters, e.g. `toggle 5`."""
    key = key_of(request.headers)
    if key is None:
        return await write(database)
    this_key = {"owner_id": owner_id, "key": key}
    request_fingerprint = fingerprint(operation, body)
    async with database.transaction() as transaction:
        try:
            wait_seconds = request.app.state.settings.idempotency_wait_seconds
            wait = f"{max(1, round(wait_seconds * 1000))}ms"
            claim = {**this_key, "fingerprint": request_fingerprint, "wait": wait}
            claimed = await transaction.fetchrow(_CLAIM, claim)
        except asyncpg.LockNotAvailableError:
            raise IdempotencyKeyInFlight() from None
        if claimed is None:
            stored = await transaction.fetchrow(_STORED, this_key)
            if stored is None:  # swept between the claim and this read: the first is long gone
                raise IdempotencyKeyInFlight()
            if stored["fingerprint"] != request_fingerprint:
                raise IdempotencyKeyReused()
            headers = orjson.loads(stored["headers"]) | {REPLAYED: "true"}
            return Response(stored["body"], stored["status"], headers, "application/json")

        response = await write(transaction)
        kept = {
            name: response.headers[name] for name in _STORED_HEADERS if name in response.headers
        }
        outcome = {"status": response.status_code, "headers": orjson.dumps(kept).decode()}
        await transaction.fetchrow(
            _STORE, {**this_key, **outcome, "body": response.body, "ttl": KEY_TTL}
        )
        return response
