"""Token verification: HS256 with the shared secret, or Better Auth's asymmetric keys from JWKS.

Pure: no FastAPI here. `TokenVerifier.verify` turns a compact JWT into an `AuthUser` or raises
`TokenError`, which the HTTP layer answers with 401. The key server is not trusted either: a
fetch is bounded in time and bytes, and a key set we cannot use changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
from jwt import PyJWK
from jwt.types import Options

from backend.config import HMAC_ALGORITHMS, Settings
from backend.errors import TokenError, TokenExpired, TokenNotYetValid, UnknownKey
from backend.models import USER_ID_MAX

logger = logging.getLogger("backend.auth")

MAX_TOKEN_BYTES = 8192
MAX_KID_LENGTH = 256
MAX_JWKS_BYTES = 1 << 20  # decoded: a gzip body counts as what it inflates to
MIN_RSA_BITS = 2048  # NIST SP 800-131A; PyJWT only warns below it
# We decode gzip ourselves (see _CappedBody) and nothing else a server might choose.
_FETCH_HEADERS = {"Accept": "application/json", "Accept-Encoding": "gzip"}
# The key each algorithm verifies with (RFC 7518 3.1, RFC 8037): key type, and curves where the
# type has several. A JWK need not state its "alg", so a token must not pair one with another.
_KEY_FOR_ALGORITHM: dict[str, tuple[str, frozenset[str] | None]] = {
    "EdDSA": ("OKP", None),  # PyJWT parses only Ed25519/Ed448 OKP keys
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
}
_ASYMMETRIC_KEY_TYPES = frozenset(kty for kty, _ in _KEY_FOR_ALGORITHM.values())


@dataclass(frozen=True, slots=True)
class AuthUser:
    """Who the verified token speaks for."""

    id: str
    email: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: PyJWK = field(compare=False)
    declared_algorithm: str | None  # the JWK's own "alg", when it states one
    key_type: str  # "kty"
    curve: str | None  # "crv", for EC and OKP keys
    published: bytes  # the JWK as served, keys sorted: a kid reused for other material differs

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with `algorithm` may be checked with this key at all."""
        if self.declared_algorithm not in (None, algorithm):
            return False
        key_type, curves = _KEY_FOR_ALGORITHM[algorithm]
        return self.key_type == key_type and (curves is None or self.curve in curves)


class _UnusableKey(ValueError):
    """A published JWK we will not verify with; the message says why."""


class JwksCache:
    """Public keys from a JWKS endpoint, kept in memory.

    Known keys never cost a network call on the request path. A fetch is one shared task:
    every request that needs a key the cache lacks (a rotation) awaits the fetch in flight or
    starts the next one, and all of them share its outcome, success or failure. Fetches start
    at least `cooldown` apart: a request arriving inside the cooldown waits for the next fetch
    rather than failing a freshly rotated key. A fetch ends within `timeout`, connect to last
    byte, and never holds more than MAX_JWKS_BYTES of body, decoded. Keys older than `ttl` are
    refetched in the background. When a fetch fails, the keys already known keep working.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl: float,
        cooldown: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        given = httpx.URL(url)
        # Credentials go as Basic auth, never in the URL: httpx's log lines and errors quote it.
        self.url = str(given.copy_with(userinfo=b""))
        self._auth = httpx.BasicAuth(given.username, given.password) if given.userinfo else None
        self._client = client
        self._ttl = ttl
        self._cooldown = cooldown
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._fetch: asyncio.Task[bool] | None = None  # the fetch in flight, or the last one
        self._next_fetch_at = float("-inf")  # the cooldown: no fetch starts before this
        self._stale_at = float("-inf")  # the TTL: keys from the last good fetch age out then
        self.on_keys_removed: Callable[[], None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def key_for(self, kid: str) -> _Key:
        """The key with this id, refetching the JWKS once if the id is new to us."""
        if kid in self._keys:
            self.refresh_if_stale()
        else:
            await self.refresh()  # a rotation or a stranger: a storm of them costs one fetch
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKey("Token is signed with an unknown key.")
        return key

    async def refresh(self) -> bool:
        """Await the fetch in flight, or start the next one once the cooldown allows.

        False if it failed (old keys are kept). A cancelled caller leaves the shared fetch be."""
        return await asyncio.shield(self._current_fetch())

    def refresh_if_stale(self) -> None:
        """Start a background refetch once the keys are older than the TTL; never waits."""
        if self._clock() >= self._stale_at:
            self._current_fetch()

    async def aclose(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)

    def _current_fetch(self) -> asyncio.Task[bool]:
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.create_task(self._fetch_after_cooldown(), name="jwks-fetch")
        return self._fetch

    async def _fetch_after_cooldown(self) -> bool:
        await asyncio.sleep(self._next_fetch_at - self._clock())
        self._next_fetch_at = self._clock() + self._cooldown
        try:
            # The whole fetch, connect to last byte: httpx's own timeout is per read, and a
            # server sending a byte a second never trips it.
            async with asyncio.timeout(self._timeout):
                body = await self._download()
            keys, skipped = _parse_key_set(body)
        except (httpx.HTTPError, TimeoutError, ValueError, zlib.error) as exc:
            logger.warning(
                "JWKS fetch from %s failed (%s: %.1000s); keeping %d known key(s)",
                self.url,
                type(exc).__name__,
                str(exc) or f"no complete response within {self._timeout:g} s",
                len(self._keys),
            )
            return False
        if skipped:
            logger.warning(
                "JWKS from %s: skipped %d key(s) we cannot use: %.1000s",
                self.url,
                len(skipped),
                "; ".join(skipped),
            )
        self._replace_keys(keys)
        self._stale_at = self._clock() + self._ttl
        return True

    async def _download(self) -> bytes:
        async with self._client.stream(
            "GET", self.url, headers=_FETCH_HEADERS, auth=self._auth
        ) as response:
            response.raise_for_status()
            declared = int(response.headers.get("content-length", 0))
            if declared > MAX_JWKS_BYTES:  # refused before a byte of the body is read
                raise ValueError(f"JWKS Content-Length {declared} is over {MAX_JWKS_BYTES} bytes")
            body = _CappedBody(response.headers.get("content-encoding", "identity"))
            async for chunk in response.aiter_raw():
                body.add(chunk)
            return body.value()

    def _replace_keys(self, keys: dict[str, _Key]) -> None:
        # A kid now naming other key material counts as withdrawn and added: what it signed goes.
        changed = {kid for kid in keys.keys() & self._keys.keys() if keys[kid] != self._keys[kid]}
        added = (keys.keys() - self._keys.keys()) | changed
        removed = (self._keys.keys() - keys.keys()) | changed
        if added or removed:
            logger.info("JWKS keys changed: added %s, removed %s", sorted(added), sorted(removed))
        self._keys = keys
        if removed and self.on_keys_removed is not None:
            self.on_keys_removed()


class _CappedBody:
    """A response body decoded as it arrives and refused once past MAX_JWKS_BYTES. httpx's own
    decoder inflates each network read whole: one 64 KiB read of a gzip bomb is 64 MiB."""

    def __init__(self, content_encoding: str) -> None:
        encoding = content_encoding.lower()
        if encoding not in ("identity", "gzip"):
            raise ValueError(f"JWKS Content-Encoding {encoding!r} is not supported")
        self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, raw: bytes) -> None:
        data = raw
        if self._gunzip is not None:  # inflate at most one byte past the cap, whatever the ratio
            data = self._gunzip.decompress(raw, MAX_JWKS_BYTES - self._size + 1)
        self._size += len(data)
        if self._size > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        self._parts.append(data)

    def value(self) -> bytes:
        if self._gunzip is not None and not self._gunzip.eof:  # cut short: its CRC is unchecked
            raise ValueError("JWKS gzip body ends before its gzip stream does")
        return b"".join(self._parts)


def _parse_key_set(body: bytes) -> tuple[dict[str, _Key], list[str]]:
    """The usable keys of a JWKS document by kid, and why each other key was skipped.

    One unusable key (too weak, malformed) is skipped and the others still verify; a body that
    is not a JWKS, or whose keys are all unusable, is a failed fetch and changes nothing."""
    document = orjson.loads(body)  # nesting past 1024 levels is a JSONDecodeError, no recursion
    published = document.get("keys", []) if isinstance(document, dict) else None
    if not isinstance(published, list):
        raise ValueError('JWKS is not a JSON object with a "keys" list')
    keys: dict[str, _Key] = {}
    skipped: list[str] = []
    for index, item in enumerate(published):
        kid = item.get("kid") if isinstance(item, dict) else None
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
            skipped.append(f"key #{index}: no 'kid' a token could name")
            continue
        try:
            keys[kid] = _key_from(item)
        except _UnusableKey as exc:
            skipped.append(f"{kid!r}: {exc}")
    if skipped and not keys:
        raise ValueError(f"no usable key among {len(published)}: {'; '.join(skipped)}")
    return keys, skipped


def _key_from(item: dict[str, Any]) -> _Key:
    """One published JWK as a key to verify with, or `_UnusableKey` saying why not."""
    key_type, algorithm, curve = item.get("kty"), item.get("alg"), item.get("crv")
    # Symmetric ("oct") keys never come from a JWKS: an HMAC key must not be public.
    if not isinstance(key_type, str) or key_type not in _ASYMMETRIC_KEY_TYPES:
        raise _UnusableKey(f"'kty' {key_type!r} is not a public key type")
    if not (algorithm is None or (isinstance(algorithm, str) and algorithm in _KEY_FOR_ALGORITHM)):
        raise _UnusableKey(f"'alg' {algorithm!r} is not an algorithm we accept")
    if not (curve is None or isinstance(curve, str)):
        raise _UnusableKey(f"'crv' {curve!r} is not a curve name")
    try:
        jwk = PyJWK(item)
        published = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except Exception as exc:  # hostile input: whatever PyJWT cannot load is skipped, not a crash
        raise _UnusableKey(f"{type(exc).__name__}: {exc}") from exc
    if key_type == "RSA" and jwk.key.key_size < MIN_RSA_BITS:
        raise _UnusableKey(f"an RSA key of {jwk.key.key_size} bits, under {MIN_RSA_BITS}")
    return _Key(jwk, algorithm, key_type, curve, published)


class VerifiedTokens:
    """Tokens already verified, remembered until their `exp` (bounded, least recent out).

    A browser sends the same token for its whole life (15 minutes for Better Auth), so most
    requests skip the signature check: `make bench` measures what that buys. An entry never
    outlives the token's own `exp`, and a key withdrawn from the JWKS empties the cache.
    """

    def __init__(self, max_entries: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, tuple[AuthUser, float]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def get(self, token: str) -> AuthUser | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return entry[0]

    def clear(self) -> None:
        self._entries.clear()

    def put(self, token: str, user: AuthUser, expires_at: float) -> None:
        self._entries[token] = (user, expires_at)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class TokenVerifier:
    """Checks signature, algorithm, expiry and (when configured) issuer and audience."""

    def __init__(
        self,
        *,
        algorithms: Collection[str],
        secret: bytes | None = None,
        jwks: JwksCache | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30,
    ) -> None:
        self._algorithms = frozenset(algorithms)
        self._secret = secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._options: Options = {"require": ["exp", "sub"], "verify_aud": audience is not None}
        self._verified = VerifiedTokens()
        if jwks is not None:  # a withdrawn key takes its tokens with it, cached or not
            jwks.on_keys_removed = self._verified.clear

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient | None) -> TokenVerifier:
        jwks = None
        if settings.better_auth_jwks_url is not None and client is not None:
            jwks = JwksCache(
                settings.better_auth_jwks_url,
                client,
                ttl=settings.jwks_cache_ttl_seconds,
                cooldown=settings.jwks_refetch_cooldown_seconds,
                timeout=settings.jwks_fetch_timeout_seconds,
            )
        secret = settings.better_auth_secret
        return cls(
            algorithms=settings.jwt_algorithms,
            secret=secret.get_secret_value().encode() if secret is not None else None,
            jwks=jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
        )

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def verify(self, token: str) -> AuthUser:
        """The user the token speaks for, or `TokenError`."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("Token is too large.")
        if (known := self._verified.get(token)) is not None:
            if self._jwks is not None:
                self._jwks.refresh_if_stale()  # withdrawn keys are noticed even on cache hits
            return known
        user, expires_at = await self._verify_signed(token)
        self._verified.put(token, user, expires_at)
        return user

    async def _verify_signed(self, token: str) -> tuple[AuthUser, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("Token is malformed.") from exc

        # The allowlist comes from configuration; the token only picks among those.
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenError(f"Token algorithm {algorithm!r} is not accepted.")
        key = await self._key_for(algorithm, header.get("kid"))

        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("Token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenNotYetValid("Token is not valid yet.") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("Token issuer is not accepted.") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("Token audience is not accepted.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"Token lacks the {exc.claim!r} claim.") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("Token signature or claims are invalid.") from exc
        except Exception as exc:
            # Whatever PyJWT did not foresee (a key it cannot use for this algorithm...) is still
            # a token we cannot trust: 401, never a 500. Logged, since it may hide a bug of ours.
            logger.warning("token verification failed unexpectedly", exc_info=exc)
            raise TokenError("Token signature or claims are invalid.") from exc
        try:
            expires_at = float(claims["exp"])
        except OverflowError as exc:  # an integer past float range: PyJWT compared it as int
            raise TokenError("Token 'exp' is not a usable time.") from exc
        return _user_from(claims), expires_at

    async def _key_for(self, algorithm: str, kid: object) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            return self._secret
        if self._jwks is None:
            raise TokenError("Token needs a JWKS key, and none is configured.")
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
            raise TokenError("Token header has no usable 'kid'.")
        key = await self._jwks.key_for(kid)
        if not key.fits(algorithm):
            raise TokenError(f"Key {kid!r} cannot verify {algorithm} signatures.")
        return key.jwk.key


def _user_from(claims: dict[str, Any]) -> AuthUser:
    subject = claims.get("sub")
    if (
        not isinstance(subject, str)
        or not 0 < len(subject) <= USER_ID_MAX
        or _storable(subject) != subject
    ):
        raise TokenError("Token 'sub' is not a usable user id.")
    email, name = claims.get("email"), claims.get("name")
    return AuthUser(
        id=subject,
        email=_storable(email) if isinstance(email, str) else None,
        name=_storable(name) if isinstance(name, str) else None,
    )


def _storable(text: str) -> str:
    """`text` as PostgreSQL can store it: no NUL (text cannot hold one), lone surrogates (which
    JSON allows and UTF-8 cannot encode) replaced. Better Auth's `name` is whatever users type."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
