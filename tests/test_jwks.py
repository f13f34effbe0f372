"""Better Auth's asymmetric tokens: the JWKS key cache, rotation, outages, and attacks,
including key servers that are slow, huge, malformed or hostile."""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from fastapi import FastAPI
from jwt.warnings import InsecureKeyLengthWarning

from backend.auth import MAX_JWKS_BYTES, JwksCache, TokenVerifier
from backend.config import Settings
from backend.errors import TokenError
from backend.main import create_app
from tests.conftest import SECRET, ClientFactory, Headers, app_client
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


class Clock:
    """A clock the test moves by hand: a TTL or a cooldown is over at once, not in real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_cache(jwks_server: JwksServer) -> AsyncIterator[CacheFactory]:
    """JwksCache(url, ...) on a real HTTP client; background refreshes are ended after the test."""
    caches: list[JwksCache] = []
    async with httpx.AsyncClient(timeout=2) as http:

        def make(
            *,
            url: str | None = None,
            ttl: float = 300,
            cooldown: float = 0,
            timeout: float = 2,
            clock: Callable[[], float] = time.monotonic,
        ) -> JwksCache:
            cache = JwksCache(
                url or jwks_server.url,
                http,
                ttl=ttl,
                cooldown=cooldown,
                timeout=timeout,
                clock=clock,
            )
            caches.append(cache)
            return cache

        yield make
        for cache in caches:
            await cache.aclose()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines logged: an app built earlier may have set the root logger to INFO."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


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
    assert jwks_server.request_headers[b"accept-encoding"] == b"gzip"  # the one we decode


async def test_stale_keys_are_refetched_once_per_ttl_in_the_background(
    jwks_server: JwksServer, make_cache: CacheFactory, clock: Clock
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    jwks_server.delay = 0.05  # each refresh is in flight while more requests arrive
    cache = make_cache(ttl=0.2, clock=clock)
    verifier = _verifier(cache)
    assert await cache.refresh()
    for ttl_period in (1, 2):  # after each TTL: exactly one more fetch, however many requests
        clock.now += 0.25
        for _ in range(20):
            assert (await verifier.verify(key.sign())).id == "ba-user"
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        assert jwks_server.requests == 1 + ttl_period


async def test_a_failing_endpoint_is_retried_at_most_once_per_cooldown(
    jwks_server: JwksServer, make_cache: CacheFactory, clock: Clock
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    cache = make_cache(ttl=0.01, cooldown=0.5, clock=clock)
    verifier = _verifier(cache)
    assert await cache.refresh()
    jwks_server.status = 503
    clock.now += 0.6  # stale, and past the cooldown: the next request starts a refresh
    for _ in range(20):  # known keys keep working; the failed refresh is not retried at once
        assert (await verifier.verify(key.sign())).id == "ba-user"
        await asyncio.sleep(0.01)
    assert jwks_server.requests == 2


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)


def _one_key_set(**member: object) -> bytes:
    """A key set of one Ed25519 key, kid "k2", with `member` overriding its JWK members."""
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": "k2",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    return orjson.dumps({"keys": [{**jwk, **member}]})


_KNOWN_KEY = make_key("EdDSA", "k1")  # what each broken body's test fetched first
_WEAK_RSA = make_key("RS256", "weak", key_size=1024)
_NOT_A_JWKS = '(ValueError: JWKS is not a JSON object with a "keys" list)'


@pytest.mark.parametrize(
    ("body", "content_encoding", "reason"),
    [
        (b"[]", None, _NOT_A_JWKS),
        (b'{"keys": 5}', None, _NOT_A_JWKS),
        (b'{"keys": "k1"}', None, _NOT_A_JWKS),
        (b"not json", None, "(JSONDecodeError: invalid literal"),
        (
            b'{"keys": [], "pad": "' + b"p" * (1 << 20) + b'"}',
            None,
            "(ValueError: JWKS Content-Length 1048599 is over 1048576 bytes)",
        ),
        (
            b'{"keys": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
            None,
            "(JSONDecodeError: depth limit exceeded",
        ),
        (
            _one_key_set(kty=["OKP"]),
            None,
            "(ValueError: no usable key among 1: 'k2': 'kty' ['OKP'] is not a public key type)",
        ),
        (
            _one_key_set(alg=["EdDSA"]),
            None,
            "(ValueError: no usable key among 1: 'k2': 'alg' ['EdDSA'] is not an algorithm "
            "we accept)",
        ),
        (
            orjson.dumps({"keys": [_WEAK_RSA.jwk]}),
            None,
            "(ValueError: no usable key among 1: 'weak': an RSA key of 1024 bits, under 2048)",
        ),
        (
            orjson.dumps({"keys": [_KNOWN_KEY.jwk]}),
            "br",
            "(ValueError: JWKS Content-Encoding 'br' is not supported)",
        ),
        (
            _gzip(orjson.dumps({"keys": [_KNOWN_KEY.jwk]}))[:-4],  # no length trailer: unchecked
            "gzip",
            "(ValueError: JWKS gzip body ends before its gzip stream does)",
        ),
        (b"not gzip", "gzip", "(error: Error -3 while decompressing data: incorrect header check)"),
    ],
    ids=[
        "array",
        "keys a number",
        "keys a string",
        "not JSON",
        "Content-Length over 1 MiB",
        "nested 100,000 deep",
        "kty a list",
        "alg a list",
        "only a 1024-bit RSA key",
        "brotli",
        "gzip cut short",
        "gzip that is not",
    ],
)
async def test_a_broken_key_set_is_refused_and_known_keys_kept(
    jwks_server: JwksServer,
    make_cache: CacheFactory,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    content_encoding: str | None,
    reason: str,
) -> None:
    jwks_server.keys = [_KNOWN_KEY]
    cache = make_cache()
    verifier = _verifier(cache)
    assert await cache.refresh()
    jwks_server.body = body
    if content_encoding is not None:
        jwks_server.headers = [(b"content-encoding", content_encoding.encode())]
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert not await cache.refresh()
        with pytest.raises(TokenError) as caught:  # an unknown kid meets the same body: a 401
            await verifier.verify(make_key("EdDSA", "k2").sign())
    assert caught.value.code == "unknown_key"
    assert cache.kids == {"k1"}
    lines = _warnings(caplog)
    assert len(lines) == 2  # one line per failed fetch
    assert lines[0].startswith(f"JWKS fetch from {jwks_server.url} failed {reason}"), lines[0]
    assert lines[0].endswith("; keeping 1 known key(s)")
    assert (await verifier.verify(_KNOWN_KEY.sign())).id == "ba-user"


@pytest.mark.parametrize("content_encoding", [None, "GZIP"], ids=["plain", "gzip"])
async def test_a_key_set_of_exactly_1_mib_is_accepted(
    jwks_server: JwksServer, make_cache: CacheFactory, content_encoding: str | None
) -> None:
    key = make_key("EdDSA", "k1")
    body = orjson.dumps({"keys": [key.jwk], "pad": ""})
    body = body.replace(b'"pad":""', b'"pad":"' + b"p" * (MAX_JWKS_BYTES - len(body)) + b'"')
    assert len(body) == MAX_JWKS_BYTES  # counted decoded: the gzip body is a few KiB
    jwks_server.body = body if content_encoding is None else _gzip(body)
    if content_encoding is not None:
        jwks_server.headers = [(b"content-encoding", content_encoding.encode())]
    cache = make_cache()
    assert await cache.refresh()
    assert cache.kids == {"k1"}


@functools.cache
def _gzip_bomb() -> bytes:
    """64 MiB that gzip packs into under 300 KiB (at its fastest level), in one gzip stream."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    spaces = b" " * (1 << 20)
    return b"".join(packer.compress(spaces) for _ in range(64)) + packer.flush()


_CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing "5" restarts the peak RSS


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def _restart_peak_rss() -> int:
    """Start the process's peak RSS afresh from its current RSS, and return it: what a fetch
    then adds is its own peak, not earlier tests'."""
    _CLEAR_REFS.write_text("5")
    return _peak_rss_kib()


@pytest.mark.skipif(not _CLEAR_REFS.exists(), reason="the peak RSS is read from Linux's /proc")
@pytest.mark.parametrize("body", ["gzip bomb", "400 MiB plain"])
async def test_an_oversized_body_is_cut_off_as_it_arrives(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    if body == "gzip bomb":
        jwks_server.body = _gzip_bomb()
        jwks_server.headers = [(b"content-encoding", b"gzip")]
    else:  # no Content-Length to refuse it by: only counting what arrives can stop it
        jwks_server.body, jwks_server.repeat, jwks_server.chunked = b" " * (1 << 16), 6400, True
    cache = make_cache()
    peak_before = _restart_peak_rss()
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert not await cache.refresh()
    grown_kib = _peak_rss_kib() - peak_before
    assert "failed (ValueError: JWKS larger than 1048576 bytes)" in caplog.text
    assert grown_kib < 4 * 1024, f"the fetch raised the peak RSS by {grown_kib} KiB"


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
    jwks_server: JwksServer, make_cache: CacheFactory, clock: Clock
) -> None:
    old, new = make_key("EdDSA", "old"), make_key("EdDSA", "new")
    jwks_server.keys = [old]
    cache = make_cache(ttl=0.2, clock=clock)
    verifier = _verifier(cache)
    assert (await verifier.verify(old.sign())).id == "ba-user"

    # Better Auth rotates lazily: the new kid shows up in tokens and in the JWKS beside the old.
    jwks_server.keys = [old, new]
    assert (await verifier.verify(new.sign())).id == "ba-user"  # unknown kid -> one refetch
    assert (await verifier.verify(old.sign())).id == "ba-user"
    assert cache.kids == {"old", "new"}

    # After the grace period the old key leaves the JWKS; the TTL refresh notices.
    jwks_server.keys = [new]
    clock.now += 0.25
    await verifier.verify(new.sign())  # stale -> background refresh
    await asyncio.sleep(0.1)  # the refresh's real fetch
    assert cache.kids == {"new"}
    with pytest.raises(TokenError, match="unknown key"):
        await verifier.verify(old.sign())


async def test_a_withdrawn_key_takes_its_cached_tokens_with_it(
    jwks_server: JwksServer, make_cache: CacheFactory, clock: Clock
) -> None:
    old, new = make_key("EdDSA", "old"), make_key("EdDSA", "new")
    jwks_server.keys = [old, new]
    cache = make_cache(ttl=0.2, clock=clock)
    verifier = _verifier(cache)
    token = old.sign()
    assert (await verifier.verify(token)).id == "ba-user"  # now in the verified-token cache

    # The key is withdrawn; nothing but the same cached token keeps arriving.
    jwks_server.keys = [new]
    clock.now += 0.25
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
    assert {getattr(r, "code", r) for r in results} == {"unknown_key"}
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
    jwks_server: JwksServer,
    make_cache: CacheFactory,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = make_key("RS256", "k1")
    jwks_server.keys = [key]
    cache = make_cache(ttl=0.05, clock=clock)
    verifier = _verifier(cache)
    await cache.refresh()

    jwks_server.status = 503
    clock.now += 0.1
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert (await verifier.verify(key.sign())).id == "ba-user"  # stale: refresh fails
        await asyncio.sleep(0.1)  # the refresh's real fetch
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


async def test_unusable_keys_are_skipped_and_the_others_used(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_key("EdDSA", "good")
    x = good.jwk["x"]
    published = [
        good.jwk,
        _WEAK_RSA.jwk,
        {"kty": "oct", "kid": "hmac", "k": base64.urlsafe_b64encode(b"k" * 32).decode()},
        {"kty": ["OKP"], "kid": "kty-list", "crv": "Ed25519", "x": x},
        {"kty": "OKP", "kid": "alg-list", "alg": ["EdDSA"], "crv": "Ed25519", "x": x},
        {**make_key("RS256", "enc").jwk, "alg": "RSA-OAEP"},  # an encryption key
        {"kty": "OKP", "kid": "crv-list", "crv": ["Ed25519"], "x": x},
        {"kty": "OKP", "kid": "x-number", "crv": "Ed25519", "x": 5},
        {"kty": "OKP", "crv": "Ed25519", "x": x},
        {"kty": "OKP", "kid": "", "crv": "Ed25519", "x": x},
        {"kty": "OKP", "kid": "k" * 257, "crv": "Ed25519", "x": x},
        {"kty": "OKP", "kid": 7, "crv": "Ed25519", "x": x},
        "not an object",
    ]
    jwks_server.body = orjson.dumps({"keys": published})
    cache = make_cache()
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        assert await cache.refresh()
    assert cache.kids == {"good"}
    assert _warnings(caplog) == [
        f"JWKS from {jwks_server.url}: skipped 12 key(s) we cannot use: "
        "'weak': an RSA key of 1024 bits, under 2048; "
        "'hmac': 'kty' 'oct' is not a public key type; "
        "'kty-list': 'kty' ['OKP'] is not a public key type; "
        "'alg-list': 'alg' ['EdDSA'] is not an algorithm we accept; "
        "'enc': 'alg' 'RSA-OAEP' is not an algorithm we accept; "
        "'crv-list': 'crv' ['Ed25519'] is not a curve name; "
        "'x-number': InvalidKeyError: Unable to construct key from JWK: "
        "Expected a string or bytes value; "
        + "; ".join(f"key #{i}: no 'kid' a token could name" for i in range(8, 13))
    ]
    verifier = _verifier(cache)
    assert (await verifier.verify(good.sign())).id == "ba-user"
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT's only word on such keys
        weak_token = _WEAK_RSA.sign()
    with pytest.raises(TokenError) as caught:
        await verifier.verify(weak_token)
    assert caught.value.code == "unknown_key"


async def test_a_kid_reused_for_other_key_material_takes_its_cached_tokens_with_it(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_key("EdDSA", "k1")
    jwks_server.keys = [first]
    cache = make_cache()
    verifier = _verifier(cache)
    token = first.sign()
    assert (await verifier.verify(token)).id == "ba-user"
    assert await cache.refresh()  # the same key again: its verified tokens stay
    assert verifier._verified.get(token) is not None

    jwks_server.keys = [make_key("EdDSA", "k1")]  # the name stays, the key is another
    with caplog.at_level(logging.INFO, logger="backend.auth"):
        assert await cache.refresh()
    assert "JWKS keys changed: added ['k1'], removed ['k1']" in caplog.text
    with pytest.raises(TokenError, match=r"^Token signature or claims are invalid\.$"):
        await verifier.verify(token)


async def test_a_dripping_key_server_is_cut_off_at_the_timeout(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.keys = [make_key("EdDSA", "k1")]
    jwks_server.drip = 0.05  # a byte every 50 ms: httpx's per-read timeout (2 s) never trips
    cache = make_cache(timeout=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="backend.auth"):
        async with asyncio.timeout(3):  # unbounded, the body would take ~10 s
            assert not await cache.refresh()
    assert 0.3 <= time.monotonic() - started < 1.5
    assert _warnings(caplog) == [
        f"JWKS fetch from {jwks_server.url} failed (TimeoutError: no complete response within "
        "0.3 s); keeping 0 known key(s)"
    ]


async def test_a_failed_fetch_answers_every_request_waiting_on_it(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    signer = make_key("EdDSA", "k2")
    jwks_server.body = _one_key_set(kty=["OKP"])  # a key set we cannot use
    jwks_server.delay = 0.05  # in flight while all ten requests arrive
    cache = make_cache(cooldown=1)
    verifier = _verifier(cache)
    started = time.monotonic()
    async with asyncio.timeout(5):
        results = await asyncio.gather(
            *(verifier.verify(signer.sign()) for _ in range(10)), return_exceptions=True
        )
    assert [getattr(r, "code", r) for r in results] == ["unknown_key"] * 10
    assert jwks_server.requests == 1
    assert time.monotonic() - started < 1  # no request waited out a cooldown for its own fetch


async def test_a_request_that_gives_up_leaves_the_shared_fetch_to_the_others(
    jwks_server: JwksServer, make_cache: CacheFactory
) -> None:
    jwks_server.keys = [make_key("EdDSA", "k1")]
    jwks_server.delay = 0.1
    cache = make_cache()
    impatient = asyncio.create_task(cache.key_for("k1"))
    patient = asyncio.create_task(cache.key_for("k1"))
    await asyncio.sleep(0.02)  # both wait on the one fetch now
    impatient.cancel()  # its client hung up
    assert (await patient).key_type == "OKP"
    assert impatient.cancelled()
    assert jwks_server.requests == 1


async def test_credentials_in_the_jwks_url_go_as_basic_auth_and_are_never_logged(
    jwks_server: JwksServer, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.status = 503
    cache = make_cache(url=jwks_server.url.replace("http://", "http://jwks-user:pa%3Ass@"))
    with (  # the last at_level sets caplog's handler level: DEBUG, for httpx's own lines too
        caplog.at_level(logging.WARNING, logger="backend.auth"),
        caplog.at_level(logging.DEBUG, logger="httpcore"),
        caplog.at_level(logging.DEBUG, logger="httpx"),
    ):
        assert not await cache.refresh()
    basic = base64.b64encode(b"jwks-user:pa:ss")
    assert jwks_server.request_headers[b"authorization"] == b"Basic " + basic
    assert {r.name for r in caplog.records} >= {"httpx", "backend.auth"}  # both spoke...
    assert "pa%3Ass" not in caplog.text  # ... and neither named the credentials
    assert "jwks-user" not in caplog.text
    assert f"JWKS fetch from {jwks_server.url} failed (HTTPStatusError" in caplog.text


# --- the attack matrix, over HTTP, on an app that accepts both HS256 and JWKS tokens ---------


@pytest.fixture
async def jwks_app(
    settings: Settings, jwks_server: JwksServer, make_client: ClientFactory
) -> tuple[httpx.AsyncClient, SigningKey]:
    key = make_key("EdDSA", "ba-key-1")
    jwks_server.keys = [
        key,
        make_key("RS256", "ba-key-rsa"),
        # Keys that do not state their "alg" (RFC 7517 makes it optional): the token's header
        # is then the only word on the algorithm, and it must not pick one the key cannot do.
        make_key("EdDSA", "okp-no-alg", publish_alg=False),
        make_key("ES384", "p384-no-alg", publish_alg=False),
        make_key("RS256", "rsa-declared-rs256"),  # its "alg" says RS256: not PS256 then
        _WEAK_RSA,  # 1024 bits: dropped when the key set is read
    ]
    configured = Settings(
        _env_file=None,
        database_url=settings.database_url,
        db_statement_cache=settings.db_statement_cache,
        better_auth_secret=SECRET,
        better_auth_url=jwks_server.base_url,
        jwks_refetch_cooldown_seconds=0,
    )
    return await make_client(configured), key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(server: JwksServer) -> dict[str, object]:
    return {"sub": "ba-user", "iss": server.base_url, "aud": server.base_url}


async def test_start_up_and_health_never_wait_for_the_key_server(
    settings: Settings, jwks_server: JwksServer, clean_tables: None
) -> None:
    key = make_key("EdDSA", "k1")
    jwks_server.keys = [key]
    jwks_server.drip = 0.05  # ~10 s for the body, and no read ever waits 0.5 s
    configured = Settings(
        _env_file=None,
        database_url=settings.database_url,
        better_auth_secret=SECRET,
        better_auth_url=jwks_server.base_url,
        jwks_fetch_timeout_seconds=0.5,
        jwks_refetch_cooldown_seconds=0,
    )
    app: FastAPI = create_app(configured)
    claims = _claims(jwks_server)
    hs256 = jwt.encode(
        {**claims, "sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    started = time.monotonic()
    async with asyncio.timeout(5), app_client(app) as client:
        health = await client.get("/healthz")
        served = await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {hs256}"})
        assert (health.status_code, served.status_code) == (200, 200)
        # Start-up's fetch is under way (on a busy host it may not have reached the server yet).
        assert jwks_server.requests <= 1
        assert app.state.verifier.jwks.kids == frozenset()

        # A key-signed request waits for that same fetch, which the timeout ends.
        ours = {"Authorization": f"Bearer {key.sign(claims)}"}
        refused = await client.get("/api/ba-user/tasks", headers=ours)
        waited = time.monotonic() - started
        jwks_server.drip = 0
        accepted = await client.get("/api/ba-user/tasks", headers=ours)
    assert refused.json() == {
        "detail": "Token is signed with an unknown key.",
        "code": "unknown_key",
    }
    assert 0.5 <= waited < 2
    assert accepted.status_code == 200
    assert jwks_server.requests == 2
    # httpx logs each request at INFO with its full URL: the app keeps that logger quieter.
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


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
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT signs with it all the same
        weak_token = _WEAK_RSA.sign(claims)
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
        "RSA key of 1024 bits": (weak_token, UNKNOWN_KEY),
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
