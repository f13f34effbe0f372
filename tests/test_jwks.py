"""Better Auth's asymmetric tokens: the JWKS key cache, rotation, outages, and attacks."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI

from backend.auth import MAX_JWKS_BYTES, JwksCache, TokenError, TokenVerifier
from backend.config import Settings
from backend.main import create_app
from tests.conftest import SECRET, Headers
from tests.jwks_server import JwksServer, SigningKey, make_key

ALGORITHMS = ["EdDSA", "ES256", "RS256", "PS256"]


@pytest.fixture(scope="module")
async def _module_jwks_server() -> AsyncIterator[JwksServer]:
    """One key server for the module: stopping a uvicorn takes a tenth of a second or more."""
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def jwks_server(_module_jwks_server: JwksServer) -> JwksServer:
    """The module's key server, serving an empty key set plainly with no requests seen."""
    _module_jwks_server.reset()
    return _module_jwks_server


CacheFactory = Callable[..., JwksCache]


@pytest.fixture
async def make_cache(jwks_server: JwksServer) -> AsyncIterator[CacheFactory]:
    """JwksCache(url, ...) on a real HTTP client; background refreshes are ended after the test."""
    caches: list[JwksCache] = []
    async with httpx.AsyncClient(timeout=2) as http:

        def make(*, url: str | None = None, ttl: float = 300, cooldown: float = 0) -> JwksCache:
            caches.append(JwksCache(url or jwks_server.url, http, ttl=ttl, cooldown=cooldown))
            return caches[-1]

        yield make
        for cache in caches:
            await cache.aclose()


def _verifier(cache: JwksCache, leeway: float = 30) -> TokenVerifier:
    return TokenVerifier(algorithms=ALGORITHMS, jwks=cache, leeway=leeway)


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_each_better_auth_algorithm_verifies(
    jwks_server: JwksServer, make_cache: CacheFactory, alg: str
) -> None:
    key = make_key(alg, f"kid-{alg}")
    jwks_server.keys = [key]
    verifier = _verifier(make_cache())

    user = await verifier.verify(key.sign({"sub": "u-1", "email": "u@example.com"}))
    assert (user.id, user.email) == ("u-1", "u@example.com")


async def test_known_key_costs_no_fetch(jwks_server: JwksServer, make_cache: CacheFactory) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    cache = make_cache()
    assert await cache.refresh()
    verifier = _verifier(cache)
    for _ in range(50):
        await verifier.verify(key.sign())
    await asyncio.sleep(0.05)  # a background refresh, had one been started, would be done now
    assert jwks_server.requests == 1
    assert jwks_server.request_headers[b"accept"] == b"application/json"


async def test_stale_keys_are_refetched_once_per_ttl_in_the_background(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    jwks_server.delay = 0.05  # each refresh is in flight while more requests arrive
    cache = make_cache(ttl=0.2)
    verifier = _verifier(cache)
    assert await cache.refresh()
    for ttl_period in (1, 2):  # after each TTL: exactly one more fetch, however many requests
        await asyncio.sleep(0.25)
        for _ in range(20):
            assert (await verifier.verify(key.sign())).id == "ba-user"
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        assert jwks_server.requests == 1 + ttl_period


async def test_a_failing_endpoint_is_retried_at_most_once_per_cooldown(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    cache = make_cache(ttl=0.01, cooldown=0.5)
    verifier = _verifier(cache)
    assert await cache.refresh()
    jwks_server.status = 503
    await asyncio.sleep(0.6)  # stale, and past the cooldown: the next request starts a refresh
    for _ in range(20):  # known keys keep working; the failed refresh is not retried at once
        assert (await verifier.verify(key.sign())).id == "ba-user"
        await asyncio.sleep(0.01)
    assert jwks_server.requests == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", 'JWKS is not a JSON object with a "keys" list'),
        (b'{"keys": 5}', 'JWKS is not a JSON object with a "keys" list'),
        (b'{"keys": "k1"}', 'JWKS is not a JSON object with a "keys" list'),
        (b"not json", "JSONDecodeError"),
        (b'{"keys": [], "pad": "' + b"p" * (1 << 20) + b'"}', "JWKS larger than 1048576 bytes"),
    ],
    ids=["array", "keys a number", "keys a string", "not JSON", "over 1 MiB"],
)
async def test_a_broken_key_set_is_refused_and_known_keys_kept(
    jwks_server: JwksServer,
    make_cache: CacheFactory,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    reason: str,
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    cache = make_cache()
    assert await cache.refresh()
    jwks_server.body = body
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert not await cache.refresh()
    assert cache.kids == {"k1"}
    assert reason in caplog.text
    assert (await _verifier(cache).verify(key.sign())).id == "ba-user"


async def test_a_key_set_of_exactly_1_mib_is_accepted(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    key = make_key("EdDSA", "k1")
    body = orjson.dumps({"keys": [key.jwk], "pad": ""})
    jwks_server.body = body.replace(
        b'"pad":""', b'"pad":"' + b"p" * (MAX_JWKS_BYTES - len(body)) + b'"'
    )
    assert len(jwks_server.body) == MAX_JWKS_BYTES
    cache = make_cache()
    assert await cache.refresh()
    assert cache.kids == {"k1"}


@pytest.mark.parametrize("kid", ["k", "k" * 256], ids=["1 character", "256 characters"])
async def test_a_kid_at_the_length_limits_is_looked_up(
    jwks_server: JwksServer, make_cache: CacheFactory, kid: str
) -> None:
    key = make_key("EdDSA", kid)
    jwks_server.keys = [key]
    assert (await _verifier(make_cache()).verify(key.sign())).id == "ba-user"


async def test_a_key_set_without_keys_is_an_empty_one(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    jwks_server.body = b"{}"
    cache = make_cache()
    assert await cache.refresh()
    assert cache.kids == frozenset()


async def test_key_changes_are_logged_and_need_no_verifier(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = make_key("EdDSA", "old"), make_key("EdDSA", "new")
    jwks_server.keys = [old]
    cache = make_cache()  # a cache on its own: no verifier listens for withdrawn keys
    with caplog.at_level(logging.INFO, logger="backend.auth"):
        assert await cache.refresh()
        jwks_server.keys = [old, new]
        assert await cache.refresh()
        jwks_server.keys = [new]
        assert await cache.refresh()
    changes = [r.getMessage() for r in caplog.records if "JWKS keys changed" in r.getMessage()]
    assert changes == [
        "JWKS keys changed: added ['old'], removed []",
        "JWKS keys changed: added ['new'], removed []",
        "JWKS keys changed: added [], removed ['old']",
    ]


async def test_rotation_old_and_new_valid_during_overlap_then_old_removed(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    old, new = make_key("EdDSA", "old"), make_key("EdDSA", "new")
    jwks_server.keys = [old]
    cache = make_cache(ttl=0.2)
    verifier = _verifier(cache)
    assert (await verifier.verify(old.sign())).id == "ba-user"

    # Better Auth rotates lazily: the new kid shows up in tokens and in the JWKS beside the old.
    jwks_server.keys = [old, new]
    assert (await verifier.verify(new.sign())).id == "ba-user"  # unknown kid -> one refetch
    assert (await verifier.verify(old.sign())).id == "ba-user"
    assert cache.kids == {"old", "new"}

    # After the grace period the old key leaves the JWKS; the TTL refresh notices.
    jwks_server.keys = [new]
    await asyncio.sleep(0.25)
    await verifier.verify(new.sign())  # stale -> background refresh
    await asyncio.sleep(0.1)
    assert cache.kids == {"new"}
    with pytest.raises(TokenError, match="unknown key"):
        await verifier.verify(old.sign())


async def test_a_withdrawn_key_takes_its_cached_tokens_with_it(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    old, new = make_key("EdDSA", "old"), make_key("EdDSA", "new")
    jwks_server.keys = [old, new]
    cache = make_cache(ttl=0.2)
    verifier = _verifier(cache)
    token = old.sign()
    assert (await verifier.verify(token)).id == "ba-user"  # now in the verified-token cache

    # The key is withdrawn; nothing but the same cached token keeps arriving.
    jwks_server.keys = [new]
    await asyncio.sleep(0.25)
    assert (await verifier.verify(token)).id == "ba-user"  # a cache hit, and the keys are stale
    await asyncio.sleep(0.15)  # ... so that hit started a refresh, which withdrew the key
    assert cache.kids == {"new"}
    with pytest.raises(TokenError, match="unknown key"):
        await verifier.verify(token)


async def test_unknown_kid_refetches_once_then_fails(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    jwks_server.keys = [make_key("EdDSA", "k1")]
    cache = make_cache()
    await cache.refresh()
    stranger = make_key("EdDSA", "not-published")
    with pytest.raises(TokenError) as caught:
        await _verifier(cache).verify(stranger.sign())
    assert caught.value.code == "unknown_key"
    assert jwks_server.requests == 2


async def test_refetch_storm_costs_one_fetch(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    jwks_server.keys = [make_key("EdDSA", "k1")]
    jwks_server.delay = 0.05  # the fetch is in flight while the storm arrives
    cache = make_cache(cooldown=5)
    verifier = _verifier(cache)
    bogus = make_key("EdDSA", "bogus").sign()

    results = await asyncio.gather(
        *(verifier.verify(bogus) for _ in range(1000)), return_exceptions=True
    )
    assert all(isinstance(r, TokenError) for r in results)
    assert jwks_server.requests == 1


async def test_rotated_key_inside_the_cooldown_waits_for_the_next_fetch(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    old, new = make_key("ES256", "old"), make_key("ES256", "new")
    jwks_server.keys = [old]
    cache = make_cache(cooldown=0.3)
    await cache.refresh()
    jwks_server.keys = [old, new]

    started = time.monotonic()
    assert (await _verifier(cache).verify(new.sign())).id == "ba-user"
    assert 0.2 < time.monotonic() - started < 2
    assert jwks_server.requests == 2


async def test_endpoint_down_keeps_known_keys(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key = make_key("RS256", "k1")
    jwks_server.keys = [key]
    cache = make_cache(ttl=0.05)
    verifier = _verifier(cache)
    await cache.refresh()

    jwks_server.status = 503
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert (await verifier.verify(key.sign())).id == "ba-user"  # stale: refresh fails
        await asyncio.sleep(0.1)
        with pytest.raises(TokenError):
            await verifier.verify(make_key("RS256", "k2").sign())
        assert (await verifier.verify(key.sign())).id == "ba-user"
    assert cache.kids == {"k1"}
    assert (
        f"JWKS fetch from {jwks_server.url} failed (HTTPStatusError: Server error '503 "
        "Service Unavailable'"
    ) in caplog.text
    assert "; keeping 1 known key(s)" in caplog.text


async def test_endpoint_unreachable_at_start_recovers_later(make_cache: CacheFactory) -> None:
    server = JwksServer()
    await server.start()
    key = make_key("EdDSA", "k1")
    server.keys = [key]
    url, port = server.url, server.port  # the same address comes back later
    await server.stop()

    cache = make_cache(url=url)
    assert not await cache.refresh()
    with pytest.raises(TokenError):
        await _verifier(cache).verify(key.sign())

    revived = JwksServer(keys=[key])
    await revived.start(port)
    try:
        assert (await _verifier(cache).verify(key.sign())).id == "ba-user"
    finally:
        await revived.stop()


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [({"iat": +20}, True), ({"iat": +90}, False), ({"exp": -20}, True), ({"exp": -90}, False)],
)
async def test_clock_skew_leeway(
    jwks_server: JwksServer, make_cache: CacheFactory, offset: dict[str, int], accepted: bool
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    verifier = _verifier(make_cache(), leeway=30)
    now = int(time.time())
    claims = {"iat": now, "exp": now + 900}
    claim, delta = next(iter(offset.items()))
    claims[claim] = now + delta
    token = key.sign(claims)
    if accepted:
        assert (await verifier.verify(token)).id == "ba-user"
    else:
        with pytest.raises(TokenError):
            await verifier.verify(token)


async def test_oct_keys_in_a_jwks_are_never_used(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    hmac_key = make_key("EdDSA", "k1")
    hmac_key.jwk = {"kty": "oct", "kid": "k1", "k": base64.urlsafe_b64encode(b"k" * 32).decode()}
    jwks_server.keys = [hmac_key]
    cache = make_cache()
    await cache.refresh()
    assert cache.kids == frozenset()


# --- the attack matrix, over HTTP, on an app that accepts both HS256 and JWKS tokens ---------


@pytest.fixture
async def jwks_app(
    settings: Settings, jwks_server: JwksServer, clean_tables: None
) -> AsyncIterator[tuple[httpx.AsyncClient, SigningKey]]:
    key = make_key("EdDSA", "ba-key-1")
    jwks_server.keys = [
        key,
        make_key("RS256", "ba-key-rsa"),
        # Keys that do not state their "alg" (RFC 7517 makes it optional): the token's header
        # is then the only word on the algorithm, and it must not pick one the key cannot do.
        make_key("EdDSA", "okp-no-alg", publish_alg=False),
        make_key("ES384", "p384-no-alg", publish_alg=False),
        make_key("RS256", "rsa-declared-rs256"),  # its "alg" says RS256: not PS256 then
    ]
    configured = Settings(
        _env_file=None,
        database_url=settings.database_url,
        better_auth_secret=SECRET,
        better_auth_url=jwks_server.base_url,
        jwks_refetch_cooldown_seconds=0,
    )
    app: FastAPI = create_app(configured)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c,
    ):
        yield c, key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(server: JwksServer) -> dict[str, object]:
    return {"sub": "ba-user", "iss": server.base_url, "aud": server.base_url}


FORGED = ("invalid_token", "Token signature or claims are invalid.")
UNKNOWN_KEY = ("unknown_key", "Token is signed with an unknown key.")
NO_KID = ("invalid_token", "Token header has no usable 'kid'.")


def _cannot(kid: str, alg: str) -> tuple[str, str]:
    return ("invalid_token", f"Key {kid!r} cannot verify {alg} signatures.")


def _attacks(
    key: SigningKey, server: JwksServer, attacker: JwksServer
) -> dict[str, tuple[str, tuple[str, str]]]:
    """Each forged token, and the (code, detail) it must earn."""
    claims = _claims(server)
    genuine = key.sign(claims)
    header, _, signature = genuine.split(".")
    forged_payload = _b64(b'{"sub":"someone-else","exp":9999999999}')
    impostor = make_key("EdDSA", key.kid)  # same kid, another key
    # The classic confusion: HMAC keyed with the published public key (its raw bytes).
    public_bytes = base64.urlsafe_b64decode(key.jwk["x"] + "==")
    hs_with_public = jwt.encode(
        claims, public_bytes * 2, algorithm="HS256", headers={"kid": key.kid}
    )
    attacker_key = make_key("EdDSA", "attacker")
    attacker.keys = [attacker_key]
    return {
        "tampered payload": (f"{header}.{forged_payload}.{signature}", FORGED),
        "same kid, other key": (impostor.sign(claims), FORGED),
        "HS256 with the public key as secret": (hs_with_public, FORGED),
        "kid path traversal": (make_key("EdDSA", "../../etc/passwd").sign(claims), UNKNOWN_KEY),
        "kid SQL": (make_key("EdDSA", "x' OR '1'='1").sign(claims), UNKNOWN_KEY),
        "jku to attacker's JWKS": (attacker_key.sign(claims, jku=attacker.url), UNKNOWN_KEY),
        "x5u to attacker's keys": (attacker_key.sign(claims, x5u=attacker.url), UNKNOWN_KEY),
        "EdDSA key, RS256 alg": (
            _resign_header(genuine, {"alg": "RS256", "kid": "ba-key-1"}),
            _cannot("ba-key-1", "RS256"),
        ),
        **{
            f"OKP key without alg, {alg} alg": (
                _resign_header(genuine, {"alg": alg, "kid": "okp-no-alg"}),
                _cannot("okp-no-alg", alg),
            )
            for alg in ("RS256", "ES256", "PS256")
        },
        "P-384 key without alg, ES256 alg": (
            _resign_header(genuine, {"alg": "ES256", "kid": "p384-no-alg"}),
            _cannot("p384-no-alg", "ES256"),
        ),
        "RSA key declared RS256, PS256 alg": (
            _resign_header(genuine, {"alg": "PS256", "kid": "rsa-declared-rs256"}),
            _cannot("rsa-declared-rs256", "PS256"),
        ),
        "no kid": (_resign_header(genuine, {"alg": "EdDSA"}), NO_KID),
        # PyJWT refuses a non-string kid while reading the header, before our check.
        "numeric kid": (
            _resign_header(genuine, {"alg": "EdDSA", "kid": 7}),
            ("invalid_token", "Token is malformed."),
        ),
        "empty kid": (_resign_header(genuine, {"alg": "EdDSA", "kid": ""}), NO_KID),
        "kid of 257 characters": (
            _resign_header(genuine, {"alg": "EdDSA", "kid": "k" * 257}),
            NO_KID,
        ),
        "RSA key, EdDSA alg": (
            _resign_header(genuine, {"alg": "EdDSA", "kid": "ba-key-rsa"}),
            _cannot("ba-key-rsa", "EdDSA"),
        ),
        "alg none": (
            _resign_header(genuine, {"alg": "none", "kid": key.kid})[: -len(signature)],
            ("invalid_token", "Token algorithm 'none' is not accepted."),
        ),
        "wrong issuer": (
            key.sign({**claims, "iss": "https://evil.example.com"}),
            ("invalid_token", "Token issuer is not accepted."),
        ),
        "wrong audience": (
            key.sign({**claims, "aud": "https://evil.example.com"}),
            ("invalid_token", "Token audience is not accepted."),
        ),
        "oversized": (
            key.sign({**claims, "pad": "p" * 9000}),
            ("invalid_token", "Token is too large."),
        ),
    }


def _resign_header(token: str, header: dict[str, object]) -> str:
    _, payload, signature = token.split(".")
    return f"{_b64(orjson.dumps(header))}.{payload}.{signature}"


async def test_attack_matrix_is_401_each(
    jwks_app: tuple[httpx.AsyncClient, SigningKey], jwks_server: JwksServer
) -> None:
    client, key = jwks_app
    attacker = JwksServer()
    await attacker.start()
    try:
        attacks = _attacks(key, jwks_server, attacker)
        genuine = await client.get(
            "/api/ba-user/tasks",
            headers={"Authorization": f"Bearer {key.sign(_claims(jwks_server))}"},
        )
        assert genuine.status_code == 200
        answers = {}
        for name, (token, _) in attacks.items():
            response = await client.get(
                "/api/ba-user/tasks", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401, name
            assert response.headers["WWW-Authenticate"] == "Bearer", name
            body = response.json()
            answers[name] = (body["code"], body["detail"])
        assert answers == {name: expected for name, (_, expected) in attacks.items()}
        assert attacker.requests == 0  # jku / x5u are never followed
    finally:
        await attacker.stop()


async def test_oversized_token_is_refused_before_any_work(
    jwks_app: tuple[httpx.AsyncClient, SigningKey], jwks_server: JwksServer
) -> None:
    client, _ = jwks_app
    fetches = jwks_server.requests
    huge = make_key("EdDSA", "unknown-kid").sign({"pad": "p" * 9000})
    response = await client.get("/api/ba-user/tasks", headers={"Authorization": f"Bearer {huge}"})
    assert response.json() == {"detail": "Token is too large.", "code": "invalid_token"}
    assert jwks_server.requests == fetches  # an unknown kid in a huge token triggers no fetch


async def test_hs256_and_jwks_tokens_work_side_by_side(
    jwks_app: tuple[httpx.AsyncClient, SigningKey], jwks_server: JwksServer, alice: Headers
) -> None:
    client, key = jwks_app
    # With BETTER_AUTH_URL set, iss/aud are enforced for HS256 tokens too.
    refused = await client.get("/api/alice/tasks", headers=alice)
    assert refused.status_code == 401
    hs = jwt.encode(
        {**_claims(jwks_server), "sub": "alice", "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    ok_hs = await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {hs}"})
    ok_eddsa = await client.get(
        "/api/ba-user/tasks", headers={"Authorization": f"Bearer {key.sign(_claims(jwks_server))}"}
    )
    assert (ok_hs.status_code, ok_eddsa.status_code) == (200, 200)
