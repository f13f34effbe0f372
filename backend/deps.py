"""Dependencies as named types, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter, ValidationError

from backend.auth import AuthUser, TokenVerifier
from backend.db import Database
from backend.errors import Forbidden, RateLimited, TokenMissing
from backend.models import MAX_ID
from backend.ratelimit import RateLimiter

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BetterAuthJWT",
    description="A Better Auth JWT (EdDSA/ES256/RS256 via JWKS) or an HS256 token signed with "
    "BETTER_AUTH_SECRET. `sub` is the user id.",
)


def database_of(request: Request) -> Database:
    """The process's pool. Routes take a connection from it only around their statement.
    The task routes call this in their body rather than through `DatabaseDep`: a dependency
    FastAPI solves costs more per request than this lookup, and cannot fail either way."""
    database: Database = request.app.state.database
    return database


async def get_database(request: Request) -> Database:
    """`database_of` as a dependency, for apps that want it in their signature."""
    return database_of(request)


UserId = Annotated[str, Path(description="The signed-in user's id (the token's `sub`).")]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthUser:
    """The signed-in user: the bearer token verified, provided the path's `user_id` names that
    same user (a string, so it needs no validation; routes declare it with `parameters`).

    401 when the header is missing, not Bearer, or the token bad; 403 when the path is another
    user's; 429 when RATE_LIMIT_PER_MINUTE is on and spent. One dependency for all three (the
    name is the one FastAPI's docs and the template give it): each level of FastAPI dependency
    costs about 10 us per request.
    """
    if credentials is None:
        raise TokenMissing("Missing bearer token in the Authorization header.")
    verifier: TokenVerifier = request.app.state.verifier
    user = await verifier.verify(credentials.credentials)
    if request.path_params["user_id"] != user.id:
        raise Forbidden("The path user_id does not match the signed-in user.")
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and (wait := await limiter.retry_after(user.id)) is not None:
        raise RateLimited(wait)
    return user


# Parameters a route reads in its body. FastAPI resolves each parameter a route declares on
# every request, sent or not, at several microseconds each: reading the list's three query
# parameters here took 3-13% off the mixed workload's CPU per request, the path's task id and
# user id 1-3% more (bench/_cpu_per_request, three runs and two). These read them with the same
# validation and the same 422 (each error at `("query" | "path", name)`, tests/test_parameters.py);
# `parameters` gives the OpenAPI that FastAPI writes for a route that declares them.

Query = TypeVar("Query", bound=BaseModel)
_TASK_ID: TypeAdapter[int] = TypeAdapter(TaskId)


def query_of(request: Request, model: type[Query], default: Query) -> Query:
    """The query string as `model`, read as FastAPI reads query parameters: the last of a
    repeated name, unknown names ignored. `default` when the query string is empty."""
    if not request.scope["query_string"]:
        return default
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise _invalid(("query",), exc) from None


def task_id_of(request: Request) -> int:
    """The path's `{task_id}`, validated as `TaskId`."""
    try:
        return _TASK_ID.validate_python(request.path_params["task_id"])
    except ValidationError as exc:
        raise _invalid(("path", "task_id"), exc) from None


def _invalid(at: tuple[str, ...], exc: ValidationError) -> RequestValidationError:
    errors = exc.errors(include_url=False)
    return RequestValidationError([{**e, "loc": (*at, *e["loc"])} for e in errors])


# Runs at import, before a mutant could be switched on: not mutation-tested. What it returns is
# pinned by backend/openapi.json (tests/test_cli.py: the committed contract is what the code
# writes).
def parameters(  # pragma: no mutate block
    path: str, declaration: Callable[..., Any]
) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI writes for a GET of `path` whose endpoint has
    `declaration`'s signature (a function never called): for a route's `openapi_extra`, so
    its docs are those of a route that declares them."""
    route = APIRoute(path, declaration, methods=["GET"])
    operation = get_openapi(title="", version="", routes=[route])["paths"][path]["get"]
    found: list[dict[str, Any]] = operation["parameters"]
    return found


DatabaseDep = Annotated[Database, Depends(get_database)]
CurrentUser = Annotated[AuthUser, Depends(get_current_user)]
