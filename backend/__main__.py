"""`python -m backend token USER_ID`: a development token, for trying the API with curl."""

from __future__ import annotations

import argparse
import sys
import time

import jwt

from backend.config import HMAC_ALGORITHMS, get_settings


def _token(user_id: str, email: str | None, ttl: int) -> str:
    settings = get_settings()
    if settings.better_auth_secret is None:
        raise SystemExit("BETTER_AUTH_SECRET is not set: only Better Auth itself can mint tokens.")
    algorithm = next((a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if email:
        claims["email"] = email
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.better_auth_secret.get_secret_value(), algorithm=algorithm)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print an HS256 token signed with the dev secret")
    token.add_argument("user_id")
    token.add_argument("--email", default=None)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    sys.stdout.write(_token(args.user_id, args.email, args.ttl) + "\n")


if __name__ == "__main__":
    main()
