"""Dependencies as named types, so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from backend.auth import AuthUser, TokenVerifier
from backend.db import Database
from backend.errors import Forbidden, RateLimited, TokenMissing
from backend.models import MAX_ID
from backend.ratelimit import RateLimiter


async def get_database(request: Request) -> Database:
    """The process's pool. Routes take a connection from it only around their statement."""
    database: Database = request.app.state.database
    return database


class SignedInUser(HTTPBearer):
    """The signed-in user: the bearer token verified, provided the path names that same user.
    401 when the header is missing, not Bearer, or the token bad; 403 when the path is another
    user's; 429 when RATE_LIMIT_PER_MINUTE is on and spent.

    FastAPI's bearer scheme itself (so OpenAPI names it, as it would `Depends(HTTPBearer())`),
    doing all three in one dependency: each level of FastAPI dependency costs about 10 us per
    request, and this was two (the scheme, and a function taking its credentials).
    """

    async def __call__(  # type: ignore[override]  # the path's user id, besides the request
        self,
        request: Request,
        user_id: Annotated[str, Path(description="The signed-in user's id (the token's `sub`).")],
    ) -> AuthUser:
        credentials = await super().__call__(request)  # None: no `Bearer <token>` (auto_error off)
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


# Named as FastAPI's docs and its full-stack template name it.
get_current_user = SignedInUser(
    auto_error=False,
    scheme_name="BetterAuthJWT",
    description="A Better Auth JWT (EdDSA/ES256/RS256 via JWKS) or an HS256 token signed with "
    "BETTER_AUTH_SECRET. `sub` is the user id.",
)


DatabaseDep = Annotated[Database, Depends(get_database)]
CurrentUser = Annotated[AuthUser, Depends(get_current_user)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]
