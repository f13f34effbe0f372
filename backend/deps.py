"""Dependencies as named types, so route signatures read like prose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.auth import AuthUser, TokenError, TokenVerifier
from backend.errors import Forbidden
from backend.models import MAX_ID

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BetterAuthJWT",
    description="A Better Auth JWT (EdDSA/ES256/RS256 via JWKS) or an HS256 token signed with "
    "BETTER_AUTH_SECRET. `sub` is the user id.",
)


async def get_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for this request, returned to the pool right after the endpoint."""
    async with request.app.state.engine.connect() as connection:
        yield connection


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthUser:
    """The verified token's user; 401 when the header is missing, not Bearer, or the token bad."""
    if credentials is None:
        raise TokenError("Missing bearer token in the Authorization header.", "token_missing")
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify(credentials.credentials)


CurrentUser = Annotated[AuthUser, Depends(current_user)]


async def path_owner(
    user: CurrentUser,
    user_id: Annotated[str, Path(description="The signed-in user's id (the token's `sub`).")],
) -> AuthUser:
    """The token's user, provided the path names that same user; otherwise 403."""
    if user_id != user.id:
        raise Forbidden("The path user_id does not match the signed-in user.")
    return user


ConnectionDep = Annotated[AsyncConnection, Depends(get_connection, scope="function")]
OwnerDep = Annotated[AuthUser, Depends(path_owner)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]
