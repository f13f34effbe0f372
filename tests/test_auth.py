"""Who may call the API: every way a token can be wrong is a 401 with the same JSON shape."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import jwt
import pytest

from backend.auth import MAX_TOKEN_BYTES, AuthUser, TokenError, TokenVerifier, VerifiedTokens
from backend.config import Settings
from backend.main import create_app
from tests.conftest import SECRET, bearer, make_token

NOW = int(time.time())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(payload: str) -> str:
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{_b64(payload.encode())}."


def _with_header(header: bytes) -> str:
    _, payload, signature = make_token("alice").split(".")
    return f"{_b64(header)}.{payload}.{signature}"


def _tampered() -> str:
    header, _, signature = make_token("alice").split(".")
    payload = _b64(f'{{"sub":"bob","exp":{NOW + 900}}}'.encode())
    return f"{header}.{payload}.{signature}"


BAD_AUTHORIZATION = {
    "missing header": None,
    "empty header": "",
    "wrong scheme": f"Basic {make_token('alice')}",
    "scheme only": "Bearer",
    "garbage": "Bearer not-a-jwt",
    "two segments": "Bearer abc.def",
    "bad signature": f"Bearer {make_token('alice', secret='another-secret-' + 'y' * 60)}",
    "tampered payload": f"Bearer {_tampered()}",
    "expired": f"Bearer {make_token('alice', iat=NOW - 3600, exp=NOW - 60)}",
    "not yet valid": f"Bearer {make_token('alice', nbf=NOW + 3600)}",
    "issued in the future": f"Bearer {make_token('alice', iat=NOW + 3600)}",
    "alg none": "Bearer " + _unsigned(f'{{"sub":"alice","exp":{NOW + 900}}}'),
    "alg HS512 not allowed": f"Bearer {make_token('alice', algorithm='HS512')}",
    "missing sub": f"Bearer {make_token(None)}",
    "empty sub": f"Bearer {make_token('')}",
    "numeric sub": "Bearer " + jwt.encode({"sub": 42, "exp": NOW + 900}, SECRET, algorithm="HS256"),
    "missing exp": f"Bearer {make_token('alice', exp=None)}",
    "asymmetric alg without JWKS": "Bearer " + _with_header(b'{"alg":"RS256","kid":"k1"}'),
    "oversized": f"Bearer {'a' * (MAX_TOKEN_BYTES + 1)}",
}


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/alice/tasks"),
        ("POST", "/api/alice/tasks"),
        ("GET", "/api/alice/tasks/1"),
        ("PUT", "/api/alice/tasks/1"),
        ("DELETE", "/api/alice/tasks/1"),
        ("PATCH", "/api/alice/tasks/1/complete"),
    ],
)
async def test_untrusted_token_is_401_on_every_endpoint(
    client: httpx.AsyncClient, authorization: str | None, method: str, path: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"title": "x"} if method in {"POST", "PUT"} else None
    response = await client.request(method, path, headers=headers, json=body)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.json()
    assert set(error) == {"detail", "code"}
    assert error["code"] in {
        "token_missing",
        "invalid_token",
        "token_expired",
        "token_not_yet_valid",
    }


async def test_untrusted_token_writes_nothing(client: httpx.AsyncClient) -> None:
    forged = f"Bearer {make_token('alice', secret='another-secret-' + 'y' * 60)}"
    await client.post("/api/alice/tasks", headers={"Authorization": forged}, json={"title": "x"})

    listing = await client.get("/api/alice/tasks", headers=bearer("alice"))
    assert listing.json() == []


async def test_expired_and_missing_have_distinct_codes(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/alice/tasks")
    expired = await client.get(
        "/api/alice/tasks", headers=bearer("alice", iat=NOW - 3600, exp=NOW - 60)
    )
    assert missing.json()["code"] == "token_missing"
    assert expired.json() == {"detail": "Token has expired.", "code": "token_expired"}


async def test_small_clock_skew_is_tolerated(client: httpx.AsyncClient) -> None:
    # Issued 10 s "in the future" by a server whose clock runs ahead: within the 30 s leeway.
    response = await client.get("/api/alice/tasks", headers=bearer("alice", iat=NOW + 10))
    assert response.status_code == 200


def _verifier(**overrides: object) -> TokenVerifier:
    options: dict[str, object] = {"algorithms": ["HS256"], "secret": SECRET.encode(), "leeway": 30}
    options.update(overrides)
    return TokenVerifier(**options)  # type: ignore[arg-type]


async def test_verifier_returns_claims_of_the_user() -> None:
    user = await _verifier().verify(make_token("u1", email="u1@example.com", name="U One"))
    assert (user.id, user.email, user.name) == ("u1", "u1@example.com", "U One")


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"iss": "https://auth.example.com", "aud": "https://auth.example.com"}, True),
        ({"iss": "https://evil.example.com", "aud": "https://auth.example.com"}, False),
        ({"iss": "https://auth.example.com", "aud": "https://other.example.com"}, False),
        ({"aud": "https://auth.example.com"}, False),
        ({"iss": "https://auth.example.com"}, False),
    ],
)
async def test_issuer_and_audience_are_checked_when_configured(
    claims: dict[str, str], accepted: bool
) -> None:
    verifier = _verifier(issuer="https://auth.example.com", audience="https://auth.example.com")
    token = make_token("u1", **claims)
    if accepted:
        assert (await verifier.verify(token)).id == "u1"
    else:
        with pytest.raises(TokenError):
            await verifier.verify(token)


async def test_issuer_and_audience_are_ignored_when_not_configured() -> None:
    token = make_token("u1", iss="anyone", aud="anything")
    assert (await _verifier().verify(token)).id == "u1"


async def test_configured_issuer_is_enforced_over_http(settings: Settings) -> None:
    configured = settings.model_copy(
        update={
            "jwt_issuer": "https://auth.example.com",
            "jwt_audience": "https://auth.example.com",
        }
    )
    app = create_app(configured)
    good = {"iss": "https://auth.example.com", "aud": "https://auth.example.com"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c,
    ):
        ok = await c.get("/api/carol/tasks", headers=bearer("carol", **good))
        wrong_issuer = await c.get(
            "/api/carol/tasks", headers=bearer("carol", **{**good, "iss": "https://evil.test"})
        )
        wrong_audience = await c.get(
            "/api/carol/tasks", headers=bearer("carol", **{**good, "aud": "https://evil.test"})
        )
    assert ok.status_code == 200
    assert wrong_issuer.status_code == wrong_audience.status_code == 401
    assert wrong_issuer.json()["detail"] == "Token issuer is not accepted."
    assert wrong_audience.json()["detail"] == "Token audience is not accepted."


def test_verified_tokens_never_outlive_exp_and_stay_bounded() -> None:
    now = [1000.0]
    cache = VerifiedTokens(max_entries=2, clock=lambda: now[0])
    user = AuthUser("u1")
    cache.put("t1", user, expires_at=1010.0)
    assert cache.get("t1") == user
    now[0] = 1010.0
    assert cache.get("t1") is None  # expired exactly at exp
    for token in ("a", "b", "c"):
        cache.put(token, user, expires_at=2000.0)
    assert cache.get("a") is None  # least recently used went first
    assert cache.get("c") == user


async def test_a_cached_token_is_still_refused_after_it_expires() -> None:
    verifier = _verifier(leeway=0)
    token = make_token("u1", exp=int(time.time()) + 2)
    assert (await verifier.verify(token)).id == "u1"
    await asyncio.sleep(2.1)
    with pytest.raises(TokenError, match="expired"):
        await verifier.verify(token)
