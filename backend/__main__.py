"""Commands: `python -m backend serve [--migrate] [uvicorn options]` (the production server:
uvicorn, draining on SIGTERM; backend/serve.py), and two for developers that start no server
and touch no database: `python -m backend token USER_ID` (a development token, for trying the
API with curl) and `python -m backend openapi` (the API's OpenAPI document, as committed in
backend/openapi.json)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jwt

from backend.config import HMAC_ALGORITHMS, Settings, get_settings


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


def openapi_document() -> str:
    """The OpenAPI document as committed: from the code alone (default settings, never this
    machine's environment or .env), in FastAPI's order, two-space indents, a final newline."""
    from backend.main import create_app  # the app is built only for this command

    app = create_app(Settings.model_construct())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI only warns about a duplicate operation id
        document = app.openapi()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print an HS256 token signed with the dev secret")
    token.add_argument("user_id")
    token.add_argument("--email", default=None)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    openapi = commands.add_parser("openapi", help="print the OpenAPI document (make contract)")
    openapi.add_argument("--output", type=Path, help="write it to this file instead")
    commands.add_parser(
        "serve", help="serve the API: uvicorn's options (--help), draining; --migrate first"
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the rest is uvicorn's CLI, parsed by uvicorn
        from backend import serve  # uvicorn and the app: only for this command

        serve.main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "openapi":
        document = openapi_document()
        if args.output is None:
            sys.stdout.write(document)
        else:
            args.output.write_text(document, encoding="utf-8")
        return
    sys.stdout.write(_token(args.user_id, args.email, args.ttl) + "\n")


if __name__ == "__main__":
    main()
