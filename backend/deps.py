"""Dependencies as named types, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

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


async def get_current_user(
    request: Request,
    user_id: Annotated[str, Path(description="The signed-in user's id (the token's `sub`).")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthUser:
    """The signed-in user: the bearer token verified, provided the path names that same user.

    401 when the header is missing, not Bearer, or the token bad; 403 when the path is another
    user's; 429 when RATE_LIMIT_PER_MINUTE is on and spent. One dependency for all three (the
    name is the one FastAPI's docs and the template give it): each level of FastAPI dependency
    costs about 10 us per request.
    """
    if credentials is None:
        raise TokenMissing("Missing bearer token in the Authorization header.")
    verifier: TokenVerifier = request.app.state.verifier
    user = await verifier.verify(credentials.credentials)
    if user_id != user.id:
        raise Forbidden("The path user_id does not match the signed-in user.")
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and (wait := await limiter.retry_after(user.id)) is not None:
        raise RateLimited(wait)
    return user


Query = TypeVar("Query", bound=BaseModel)


def query_of(request: Request, model: type[Query], default: Query) -> Query:
    """The request's query string as `model`, validated as FastAPI validates query parameters
    (the last of repeated names, unknown names ignored), failing with the 422 FastAPI would
    raise: each error at `("query", name)`. `default` when the query string is empty.

    FastAPI resolves each query parameter a route declares on every request, sent or not: for
    the list's three that was 8% of the mixed workload's CPU (bench/_cpu_per_request). A route
    calls this in its body instead, and declares `query_parameters(...)` for OpenAPI."""
    if not request.scope["query_string"]:
        return default
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None


def query_parameters(declaration: Callable[..., Any]) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI writes for `declaration`'s signature (a function never
    called, taking `Annotated[Model, Query()]`): for a route's `openapi_extra`, so its docs are
    what declaring the model as its query would give."""
    route = APIRoute("/", declaration, methods=["GET"])
    operation = get_openapi(title="", version="", routes=[route])["paths"]["/"]["get"]
    parameters: list[dict[str, Any]] = operation["parameters"]
    return parameters


DatabaseDep = Annotated[Database, Depends(get_database)]
CurrentUser = Annotated[AuthUser, Depends(get_current_user)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]
