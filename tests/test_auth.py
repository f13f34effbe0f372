"""Who may call the API: every way a token can be wrong is a 401 with the same JSON shape."""

from __future__ import annotations

import base64
import re
import time

import httpx
import jwt
import pytest

from backend.auth import (
    _KEY_FOR_ALGORITHM,
    MAX_TOKEN_BYTES,
    AuthUser,
    TokenVerifier,
    VerifiedTokens,
)
from backend.config import ASYMMETRIC_ALGORITHMS, Settings
from backend.errors import TokenError
from tests.conftest import SECRET, ClientFactory, Database, bearer, make_token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(payload: str) -> str:
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{_b64(payload.encode())}."


def _with_header(header: bytes) -> str:
    _, payload, signature = make_token("alice").split(".")
    return f"{_b64(header)}.{payload}.{signature}"


def _tampered(now: int) -> str:
    header, _, signature = make_token("alice").split(".")
    payload = _b64(f'{{"sub":"bob","exp":{now + 900}}}'.encode())
    return f"{header}.{payload}.{signature}"


MISSING = ("token_missing", "Missing bearer token in the Authorization header.")
MALFORMED = ("invalid_token", "Token is malformed.")
FORGED = ("invalid_token", "Token signature or claims are invalid.")
UNUSABLE_SUB = ("invalid_token", "Token 'sub' is not a usable user id.")
NOT_YET = ("token_not_yet_valid", "Token is not valid yet.")


def _bad_authorizations(now: int) -> dict[str, tuple[str | None, tuple[str, str]]]:
    """Each way a token can be wrong: the Authorization header, and the (code, detail) it earns.

    Built when the test runs, so "in the future" and "expired" are relative to that moment."""
    other_secret = "another-secret-" + "y" * 60
    return {
        "missing header": (None, MISSING),
        "empty header": ("", MISSING),
        "wrong scheme": (f"Basic {make_token('alice')}", MISSING),
        "scheme only": ("Bearer", MISSING),
        "garbage": ("Bearer not-a-jwt", MALFORMED),
        "two segments": ("Bearer abc.def", MALFORMED),
        "bad signature": (f"Bearer {make_token('alice', secret=other_secret)}", FORGED),
        "tampered payload": (f"Bearer {_tampered(now)}", FORGED),
        "expired": (
            f"Bearer {make_token('alice', iat=now - 3600, exp=now - 60)}",
            ("token_expired", "Token has expired."),
        ),
        "not yet valid": (f"Bearer {make_token('alice', nbf=now + 3600)}", NOT_YET),
        "issued in the future": (f"Bearer {make_token('alice', iat=now + 3600)}", NOT_YET),
        "alg none": (
            "Bearer " + _unsigned(f'{{"sub":"alice","exp":{now + 900}}}'),
            ("invalid_token", "Token algorithm 'none' is not accepted."),
        ),
        "alg HS512 not allowed": (
            f"Bearer {make_token('alice', algorithm='HS512')}",
            ("invalid_token", "Token algorithm 'HS512' is not accepted."),
        ),
        "asymmetric alg not allowed": (
            "Bearer " + _with_header(b'{"alg":"RS256","kid":"k1"}'),
            ("invalid_token", "Token algorithm 'RS256' is not accepted."),
        ),
        "missing sub": (
            f"Bearer {make_token(None)}",
            ("invalid_token", "Token lacks the 'sub' claim."),
        ),
        "empty sub": (f"Bearer {make_token('')}", UNUSABLE_SUB),
        "numeric sub": (
            "Bearer " + jwt.encode({"sub": 42, "exp": now + 900}, SECRET, algorithm="HS256"),
            FORGED,
        ),
        "sub with NUL": ("Bearer " + make_token("ali\x00ce"), UNUSABLE_SUB),
        "sub with lone surrogate": ("Bearer " + make_token("ali\ud800ce"), UNUSABLE_SUB),
        "sub over 255 characters": (f"Bearer {make_token('a' * 256)}", UNUSABLE_SUB),
        # Correctly signed, but past what a float holds: a 401, not an OverflowError.
        "exp past float range": (
            f"Bearer {make_token('alice', exp=10**400)}",
            ("invalid_token", "Token 'exp' is not a usable time."),
        ),
        "exp infinite": (f"Bearer {make_token('alice', exp=float('inf'))}", FORGED),
        "iat past float range": (f"Bearer {make_token('alice', iat=10**400)}", NOT_YET),
        "nbf past float range": (f"Bearer {make_token('alice', nbf=10**400)}", NOT_YET),
        "missing exp": (
            f"Bearer {make_token('alice', exp=None)}",
            ("invalid_token", "Token lacks the 'exp' claim."),
        ),
        "oversized": (
            f"Bearer {'a' * (MAX_TOKEN_BYTES + 1)}",
            ("invalid_token", "Token is too large."),
        ),
    }


BAD_TOKEN_CASES = list(_bad_authorizations(0))
ENDPOINTS = [
    ("GET", "/api/alice/tasks"),
    ("POST", "/api/alice/tasks"),
    ("GET", "/api/alice/tasks/1"),
    ("PUT", "/api/alice/tasks/1"),
    ("DELETE", "/api/alice/tasks/1"),
    ("PATCH", "/api/alice/tasks/1/complete"),
]


async def _assert_refused(client: httpx.AsyncClient, method: str, path: str, case: str) -> None:
    """`case`'s Authorization on this endpoint: 401, the Bearer challenge, its exact body."""
    authorization, (code, detail) = _bad_authorizations(int(time.time()))[case]
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"title": "x"} if method in {"POST", "PUT"} else None
    response = await client.request(method, path, headers=headers, json=body)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": detail, "code": code}


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
async def test_every_untrusted_token_is_401(client: httpx.AsyncClient, case: str) -> None:
    # One endpoint: all six share one dependency, which the next test proves each one runs.
    await _assert_refused(client, "POST", "/api/alice/tasks", case)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("case", ["missing header", "bad signature"])
async def test_every_endpoint_refuses_an_untrusted_token(
    client: httpx.AsyncClient, method: str, path: str, case: str
) -> None:
    await _assert_refused(client, method, path, case)


async def test_untrusted_token_writes_nothing(client: httpx.AsyncClient) -> None:
    forged = f"Bearer {make_token('alice', secret='another-secret-' + 'y' * 60)}"
    await client.post("/api/alice/tasks", headers={"Authorization": forged}, json={"title": "x"})

    listing = await client.get("/api/alice/tasks", headers=bearer("alice"))
    assert listing.json() == []


async def test_expired_and_missing_have_distinct_codes(client: httpx.AsyncClient) -> None:
    now = int(time.time())
    missing = await client.get("/api/alice/tasks")
    expired = await client.get(
        "/api/alice/tasks", headers=bearer("alice", iat=now - 3600, exp=now - 60)
    )
    assert missing.json()["code"] == "token_missing"
    assert expired.json() == {"detail": "Token has expired.", "code": "token_expired"}


async def test_small_clock_skew_is_tolerated(client: httpx.AsyncClient) -> None:
    # Issued 10 s "in the future" by a server whose clock runs ahead: within the 30 s leeway.
    later = int(time.time()) + 10
    response = await client.get("/api/alice/tasks", headers=bearer("alice", iat=later))
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


async def test_configured_issuer_is_enforced_over_http(make_client: ClientFactory) -> None:
    c = await make_client(
        jwt_issuer="https://auth.example.com", jwt_audience="https://auth.example.com"
    )
    good = {"iss": "https://auth.example.com", "aud": "https://auth.example.com"}
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


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        (make_token("u1", exp=None), "Token lacks the 'exp' claim."),
        (make_token(None), "Token lacks the 'sub' claim."),
    ],
    ids=["exp", "sub"],
)
async def test_exp_and_sub_are_required(token: str, detail: str) -> None:
    with pytest.raises(TokenError, match=f"^{re.escape(detail)}$"):
        await _verifier().verify(token)


async def test_the_size_cap_is_8_kib_exactly() -> None:
    at_cap, over = "a" * MAX_TOKEN_BYTES, "a" * (MAX_TOKEN_BYTES + 1)
    with pytest.raises(TokenError, match=r"^Token is malformed\.$"):  # parsed, then refused
        await _verifier().verify(at_cap)
    with pytest.raises(TokenError, match=r"^Token is too large\.$"):  # refused unparsed
        await _verifier().verify(over)


async def test_an_asymmetric_token_without_a_key_set_is_refused() -> None:
    # Configuration never allows this pairing; the verifier refuses it on its own all the same.
    verifier = _verifier(algorithms=["HS256", "RS256"])
    token = _with_header(b'{"alg":"RS256","kid":"k1"}')
    with pytest.raises(TokenError, match=r"^Token needs a JWKS key, and none is configured\.$"):
        await verifier.verify(token)


def test_every_asymmetric_algorithm_names_its_key_type() -> None:
    assert set(_KEY_FOR_ALGORITHM) == ASYMMETRIC_ALGORITHMS


async def test_claims_postgres_cannot_store_do_not_lock_the_user_out(
    client: httpx.AsyncClient, db: Database
) -> None:
    # Better Auth's `name` is whatever the user typed; JSON can carry NUL and lone surrogates.
    headers = bearer("mallory", name="Mal\x00lory \ud83d", email="mal\x00@example.com")
    created = await client.post("/api/mallory/tasks", headers=headers, json={"title": "t"})
    assert created.status_code == 201
    assert await db.fetch("SELECT name, email FROM users") == [("Mallory ?", "mal@example.com")]


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


async def test_a_cached_token_is_served_until_its_exp_and_not_after() -> None:
    """Not past `exp`, whatever the leeway: then it is verified afresh (and refused, as the
    "expired" case of the bad tokens is). The cache's clock is a fake one: no waiting."""
    now = [time.time()]
    verifier = _verifier(leeway=30)
    verifier._verified = VerifiedTokens(clock=lambda: now[0])
    exp = int(now[0]) + 60
    token = make_token("u1", exp=exp)
    user = await verifier.verify(token)
    now[0] = exp - 0.001
    assert verifier._verified.get(token) == user
    now[0] = exp
    assert verifier._verified.get(token) is None


@pytest.mark.parametrize("sub", ["u", "u" * 255], ids=["1 character", "255 characters"])
async def test_a_sub_at_the_length_limits_is_a_user(sub: str) -> None:
    assert (await _verifier().verify(make_token(sub))).id == sub


async def test_a_verified_token_is_served_from_the_cache() -> None:
    verifier = _verifier()
    token = make_token("u1", name="U One")
    first = await verifier.verify(token)
    assert verifier._verified.get(token) == first  # the next request skips the signature
    assert await verifier.verify(token) == first


def test_the_verified_token_cache_holds_exactly_its_capacity() -> None:
    cache = VerifiedTokens(max_entries=2, clock=lambda: 0.0)
    cache.put("a", AuthUser("a"), expires_at=10.0)
    cache.put("b", AuthUser("b"), expires_at=10.0)
    assert cache.get("a") == AuthUser("a")
    assert cache.get("b") == AuthUser("b")


async def test_the_configured_leeway_reaches_the_verifier() -> None:
    strict = Settings(_env_file=None, better_auth_secret=SECRET, jwt_leeway_seconds=0)
    verifier = TokenVerifier.from_settings(strict, None)
    with pytest.raises(TokenError, match=r"^Token is not valid yet\.$"):
        await verifier.verify(make_token("u1", iat=int(time.time()) + 10))
