"""Every error a client can see: one class per `code`, rendered in the API's one shape
(`{"detail": ..., "code": ...}`) by FastAPI's handlers and by plain ASGI middleware alike, and
described in OpenAPI from the same classes (`documented`), never by hand.

A class names its status, its stable `code`, when it happens (`when`, for the OpenAPI tables)
and the headers its responses carry (`headers_sent`: Retry-After, WWW-Authenticate). The
handlers turn everything a request can raise into one of them; only a bug is a 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import Trouble, database_trouble
from backend.logs import current_request_id
from backend.models import ErrorOut, ValidationErrorOut
from backend.responses import JsonResponse, error_response

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

logger = logging.getLogger("backend.errors")

RETRY_AFTER_SECONDS = 2  # after a 503: the database's or the server's trouble is brief
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024  # request line + headers; a Better Auth JWT is well under 2 KiB

# What the headers an error carries mean to a client, for OpenAPI.
_HEADER_MEANINGS = {
    "Retry-After": "Seconds to wait before sending the request again.",
    "WWW-Authenticate": "`Bearer` (RFC 6750): send a valid bearer token.",
    "Allow": "The methods this path serves.",
}


class ApiError(Exception):
    """An error the client can act on, as JSON with `status_code` and `code`."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    when: ClassVar[str] = "The request cannot be read."
    headers_sent: ClassVar[tuple[str, ...]] = ()

    def __init__(self, detail: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.detail = detail or self.when
        super().__init__(self.detail)
        self.headers = headers

    def response(self, **extra: Any) -> JsonResponse:
        return error_response(self.status_code, self.code, self.detail, self.headers, **extra)


# 400
class InvalidPrecondition(ApiError):
    code = "invalid_precondition"
    when = "`If-Match` or `If-None-Match` is not `*` or a list of quoted entity tags."


class InvalidIdempotencyKey(ApiError):
    code = "invalid_idempotency_key"
    when = "`Idempotency-Key` is empty, too long, not printable ASCII, or sent twice."


class CorsPreflightRefused(ApiError):
    code = "cors_preflight_refused"
    when = "A cross-origin preflight from an origin, method or header CORS_ORIGINS does not allow."


# 401
class TokenError(ApiError):
    """The bearer token cannot be trusted: the generic 401, and the base of the others."""

    status_code = 401
    code = "invalid_token"
    when = "The bearer token is malformed, wrongly signed, or not from an accepted issuer."
    headers_sent = ("WWW-Authenticate",)

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class TokenMissing(TokenError):
    code = "token_missing"
    when = "No bearer token in the `Authorization` header."


class TokenExpired(TokenError):
    code = "token_expired"
    when = "The token's `exp` has passed: get a new one."


class TokenNotYetValid(TokenError):
    code = "token_not_yet_valid"
    when = "The token's `iat` or `nbf` is in the future (beyond the clock skew allowed)."


class UnknownKey(TokenError):
    code = "unknown_key"
    when = "The token's `kid` is not among the JWKS keys, even after a refetch."


# 403, 404, 405
class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"
    when = "The path's `user_id` is not the signed-in user."


class TaskNotFound(ApiError):
    status_code = 404
    code = "task_not_found"
    when = "No such task for this user (another user's task looks exactly the same)."

    def __init__(self, task_id: int) -> None:
        super().__init__(f"Task {task_id} was not found.")


class NotFound(ApiError):
    status_code = 404
    code = "not_found"
    when = "No such path."


class MethodNotAllowed(ApiError):
    status_code = 405
    code = "method_not_allowed"
    when = "The path does not serve this method."
    headers_sent = ("Allow",)


# 409, 412, 413, 415
class IdempotencyKeyInFlight(ApiError):
    status_code = 409
    code = "idempotency_key_in_flight"
    when = "A request with this `Idempotency-Key` is still running: retry with the same key."
    headers_sent = ("Retry-After",)

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry after "
            "`Retry-After` seconds to get its response.",
            {"Retry-After": "1"},
        )


class PreconditionFailed(ApiError):
    status_code = 412
    code = "precondition_failed"
    when = (
        "The task changed since the ETag in `If-Match` (or `If-None-Match` names it as it is): "
        "nothing was changed."
    )

    def __init__(self, task_id: int) -> None:
        super().__init__(
            f"Task {task_id} has changed since the ETag in If-Match: read it again, then retry."
        )


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"
    when = f"The body is larger than {MAX_BODY_BYTES // 1024} KiB."

    def __init__(self) -> None:
        super().__init__(f"The request body is larger than {MAX_BODY_BYTES} bytes.")


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"
    when = "The body is not `application/json` (or `+json`)."

    def __init__(self) -> None:
        super().__init__("The request body must be application/json.")


# 422
class InvalidRequest(ApiError):
    """What FastAPI and pydantic refuse; the body adds `errors`, field by field."""

    status_code = 422
    code = "validation_error"
    when = "The request does not match the schema."


class IdempotencyKeyReused(ApiError):
    status_code = 422
    code = "idempotency_key_reused"
    when = "This `Idempotency-Key` was used for another request: nothing was written."

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used for a different request (endpoint, task or body); "
            "use a new key for a new request."
        )


# 429, 431
class RateLimited(ApiError):
    status_code = 429
    code = "rate_limited"
    when = "RATE_LIMIT_PER_MINUTE is spent for this user."
    headers_sent = ("Retry-After",)

    def __init__(self, retry_after: float) -> None:
        wait = str(max(1, math.ceil(retry_after)))
        super().__init__("Too many requests for this user; slow down.", {"Retry-After": wait})


class HeadersTooLarge(ApiError):
    status_code = 431
    code = "headers_too_large"
    when = f"The request line and headers are over {MAX_HEADER_BYTES // 1024} KiB."

    def __init__(self) -> None:
        detail = f"The request line and headers exceed {MAX_HEADER_BYTES} bytes."
        super().__init__(detail, {"Connection": "close"})


# 500, 503
class InternalError(ApiError):
    status_code = 500
    code = "internal_error"
    when = "A bug; logged with the request id, which the body gives (`request_id`)."

    def __init__(self) -> None:
        super().__init__("Internal server error. Quote the request id when reporting it.")


class DatabaseUnavailable(ApiError):
    status_code = 503
    code = "database_unavailable"
    when = "The database cannot be reached, or refuses this service."
    headers_sent = ("Retry-After",)

    def __init__(self, detail: str = "The database is unavailable; retry shortly.") -> None:
        super().__init__(detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})


class Draining(ApiError):
    status_code = 503
    code = "draining"
    when = "This instance is shutting down (SIGTERM): a balancer sends new requests elsewhere."
    headers_sent = ("Retry-After",)

    def __init__(self) -> None:
        super().__init__(
            "This instance is shutting down: it still answers, but send new requests elsewhere.",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class Overloaded(ApiError):
    status_code = 503
    code = "overloaded"
    when = (
        "More requests than this instance can serve in time (backend/admission.py): refused "
        "before any work, so nothing was changed."
    )
    headers_sent = ("Retry-After",)

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "The server is at capacity; retry after `Retry-After` seconds.",
            {"Retry-After": str(retry_after_seconds)},
        )


class DatabaseBusy(DatabaseUnavailable):
    code = "database_busy"
    when = "A lock or statement timeout: nothing was changed."

    def __init__(self) -> None:
        super().__init__(
            "The database is busy (a lock or statement timeout); nothing was changed. "
            "Retry shortly (a keyed write with the same Idempotency-Key)."
        )


def documented(*errors: type[ApiError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these errors: per status, each code and when it happens, the
    body's schema, and the headers they carry."""
    by_status: dict[int, list[type[ApiError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    table: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        models = {ValidationErrorOut if error is InvalidRequest else ErrorOut for error in group}
        model: Any = models.pop() if len(models) == 1 else ValidationErrorOut | ErrorOut
        lines = [f"`{error.code}`: {error.when}" for error in group]
        description = lines[0] if len(lines) == 1 else "\n".join(f"- {line}" for line in lines)
        entry: dict[str, Any] = {"model": model, "description": description}
        headers = {name for error in group for name in error.headers_sent}
        if headers:
            entry["headers"] = {
                name: {"description": _HEADER_MEANINGS[name], "schema": {"type": "string"}}
                for name in sorted(headers)
            }
        table[status] = entry
    return table


# The handlers: what a request can raise, as one of the classes above.


async def _api_error(_: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> JsonResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    # The offending input is left out: it can be large, and it is the client's own anyway.
    errors = [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
    return InvalidRequest(f"Invalid request: {summary}").response(errors=errors)


async def _http_error(request: Request, exc: Exception) -> JsonResponse:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, ApiError):  # ours, raised while FastAPI read the body (413)
        return exc.__cause__.response()
    if exc.status_code == 400 and isinstance(exc.__cause__, _UNPARSABLE_BODY):
        # FastAPI answers 400 when json.loads fails with anything but JSONDecodeError (bad
        # UTF-8, nesting past the recursion limit, a 5,000-digit integer). To the client that
        # is malformed JSON like any other: the same 422.
        reason = _UNPARSABLE_REASONS.get(type(exc.__cause__), str(exc.__cause__))
        error = {"loc": ["body"], "msg": reason, "type": "json_invalid"}
        return InvalidRequest(f"Invalid request: body: {reason}").response(errors=[error])
    if exc.status_code == 405:  # Starlette names the first route's methods only
        return MethodNotAllowed(headers={"Allow": _allowed_methods(request)}).response()
    if exc.status_code == 404:
        return NotFound().response()
    if exc.status_code == 400:  # FastAPI's own, e.g. a body it could not read
        return ApiError(str(exc.detail)).response()
    return _internal_error(request.scope, exc)  # a status we never meant to send


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
        return _internal_error(request.scope, exc)
    if trouble is Trouble.REFUSED:  # no retry mends it: the operator must
        logger.error("the database refused this service (check DATABASE_URL): %r", exc)
    else:
        logger.warning("database %s: %r", trouble.value, exc)
    return (DatabaseBusy() if trouble is Trouble.BUSY else DatabaseUnavailable()).response()


async def _unexpected_error(request: Request, exc: Exception) -> JsonResponse:
    return _internal_error(request.scope, exc)


def _internal_error(scope: Scope, exc: Exception) -> JsonResponse:
    request_id = current_request_id()
    logger.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    error = InternalError()
    error.headers = {"X-Request-ID": request_id}
    return error.response(request_id=request_id)


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
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # Handled here rather than by the catch-all, so an outage is a 503 and not a logged crash.
    for database_error in (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
