"""The API's one error shape, `{"detail": ..., "code": ...}`, and the handlers that produce it."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.auth import TokenError
from backend.db import Trouble, database_trouble
from backend.middleware import current_request_id
from backend.responses import JsonResponse, error_response

logger = logging.getLogger("backend.errors")

RETRY_AFTER_SECONDS = "2"

_HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the client can act on; rendered as JSON with `status_code` and `code`."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class TaskNotFound(ApiError):
    status_code = 404
    code = "task_not_found"

    def __init__(self, task_id: int) -> None:
        super().__init__(f"Task {task_id} was not found.")


class PreconditionFailed(ApiError):
    status_code = 412
    code = "precondition_failed"

    def __init__(self, task_id: int) -> None:
        super().__init__(
            f"Task {task_id} has changed since the ETag in If-Match: read it again, then retry."
        )


class InvalidPrecondition(ApiError):
    status_code = 400
    code = "invalid_precondition"


class InvalidIdempotencyKey(ApiError):
    status_code = 400
    code = "invalid_idempotency_key"


class IdempotencyKeyReused(ApiError):
    status_code = 422
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used for a different request (endpoint, task or body); "
            "use a new key for a new request."
        )


class IdempotencyKeyInFlight(ApiError):
    status_code = 409
    code = "idempotency_key_in_flight"

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry after "
            "`Retry-After` seconds to get its response."
        )
        self.headers = {"Retry-After": "1"}


class RateLimited(ApiError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        super().__init__("Too many requests for this user; slow down.")
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "database_unavailable"

    def __init__(self, detail: str = "The database is unavailable; retry shortly.") -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": RETRY_AFTER_SECONDS}


class DatabaseBusy(DatabaseUnavailable):
    code = "database_busy"

    def __init__(self) -> None:
        super().__init__(
            "The database is busy (a lock or statement timeout); nothing was changed. "
            "Retry shortly (a keyed write with the same Idempotency-Key)."
        )


async def _api_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.detail, exc.headers)


async def _token_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, TokenError)
    return error_response(401, exc.code, str(exc), {"WWW-Authenticate": "Bearer"})


async def _validation_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    # The offending input is left out: it can be large, and it is the client's own anyway.
    errors = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
    return error_response(422, "validation_error", f"Invalid request: {summary}", errors=errors)


async def _http_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, _UNPARSABLE_BODY):
        # FastAPI answers 400 when json.loads fails with anything but JSONDecodeError (bad
        # UTF-8, nesting past the recursion limit, a 5,000-digit integer). To the client that
        # is malformed JSON like any other: the same 422.
        reason = _UNPARSABLE_REASONS.get(type(exc.__cause__), str(exc.__cause__))
        error = {"loc": ["body"], "msg": reason, "type": "json_invalid"}
        return error_response(
            422, "validation_error", f"Invalid request: body: {reason}", errors=[error]
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:  # Starlette names the first route's methods only
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return error_response(exc.status_code, code, str(exc.detail), headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (RFC 9110 15.5.6), HEAD wherever GET is.
    Asked of the routes themselves, one method at a time: a 405 is rare, routing is not."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    if "GET" in allowed:
        allowed.append("HEAD")
    return ", ".join(sorted(allowed))


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
_UNPARSABLE_BODY = (UnicodeDecodeError, RecursionError, ValueError)
_UNPARSABLE_REASONS: Mapping[type[BaseException], str] = {
    UnicodeDecodeError: "not valid UTF-8",
    RecursionError: "JSON nested too deeply",
}


async def _database_error(request: Request, exc: Exception) -> JsonResponse:
    trouble = database_trouble(exc)
    if trouble is None:
        return await _unexpected_error(request, exc)
    if trouble is Trouble.REFUSED:  # no retry mends it: the operator must
        logger.error("the database refused this service (check DATABASE_URL): %r", exc)
    else:
        logger.warning("database %s: %r", trouble.value, exc)
    return await _api_error(
        request, DatabaseBusy() if trouble is Trouble.BUSY else DatabaseUnavailable()
    )


async def _unexpected_error(request: Request, exc: Exception) -> JsonResponse:
    return _internal_error(request.scope, exc)


def _internal_error(scope: Scope, exc: Exception) -> JsonResponse:
    request_id = current_request_id()
    logger.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    return error_response(
        500,
        "internal_error",
        "Internal server error. Quote the request id when reporting it.",
        {"X-Request-ID": request_id},
        request_id=request_id,
    )


class ErrorBoundaryMiddleware:
    """An exception no handler took becomes our 500 here, inside the CORS layer, so a browser
    can read its body and request id. (FastAPI's own catch-all answers outside every user
    middleware, CORS included.) An error after the response began can only end the
    connection: it is left to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if started:
                raise
            await _internal_error(scope, exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(TokenError, _token_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Handled here rather than by the catch-all, so an outage is a 503 and not a logged crash.
    for database_error in (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
