"""Token verification: HS256 with the shared secret, or Better Auth's asymmetric keys from JWKS.

Pure: no FastAPI here. `TokenVerifier.verify` turns a compact JWT into an `AuthUser` or raises
`TokenError`, which the HTTP layer answers with 401.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet
from jwt.types import Options

from backend.config import HMAC_ALGORITHMS, Settings
from backend.models import USER_ID_MAX

logger = logging.getLogger("backend.auth")

MAX_TOKEN_BYTES = 8192
MAX_KID_LENGTH = 256
MAX_JWKS_BYTES = 1 << 20
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


class TokenError(Exception):
    """The bearer token cannot be trusted. `code` is stable; the message is for humans."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class AuthUser:
    """Who the verified token speaks for."""

    id: str
    email: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: PyJWK
    declared_algorithm: str | None  # the JWK's own "alg", when it states one
    key_type: str  # "kty"
    curve: str | None  # "crv", for EC and OKP keys

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with `algorithm` may be checked with this key at all."""
        if self.declared_algorithm not in (None, algorithm):
            return False
        key_type, curves = _KEY_FOR_ALGORITHM[algorithm]
        return self.key_type == key_type and (curves is None or self.curve in curves)


class JwksCache:
    """Public keys from a JWKS endpoint, kept in memory.

    Known keys never cost a network call on the request path. An unknown `kid` (a rotation)
    triggers one refetch shared by every request waiting on it, and fetches are at least
    `cooldown` apart: a request arriving inside the cooldown waits for the next fetch rather
    than failing a freshly rotated key. A TTL refresh runs in the background. When the
    endpoint fails, the keys already known keep working.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        ttl: float,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client
        self._ttl = ttl
        self._cooldown = cooldown
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[bool] | None = None
        self.on_keys_removed: Callable[[], None] | None = None
        self._fetches_done = 0  # a waiting request compares it to know whether one finished

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def key_for(self, kid: str) -> _Key:
        """The key with this id, refetching the JWKS once if the id is new to us."""
        key = self._keys.get(kid)
        if key is not None:
            self.refresh_if_stale()
            return key
        fetches_seen = self._fetches_done
        async with self._lock:
            # Only fetch if none finished while we queued: a storm of unknown kids costs one fetch.
            if self._fetches_done == fetches_seen:
                wait = self._last_attempt + self._cooldown - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise TokenError("Token is signed with an unknown key.", "unknown_key")
        return key

    async def refresh(self) -> bool:
        """Fetch the JWKS now (start-up, tests). False if it failed; old keys are kept."""
        async with self._lock:
            return await self._refresh()

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)

    def refresh_if_stale(self) -> None:
        """Start a background refetch once the keys are older than the TTL; never waits."""
        if self._clock() - self._fetched_at <= self._ttl:
            return
        if self._lock.locked() or (self._background is not None and not self._background.done()):
            return
        if self._clock() - self._last_attempt < self._cooldown:
            return
        self._background = asyncio.create_task(self.refresh(), name="jwks-refresh")

    async def _refresh(self) -> bool:
        self._last_attempt = self._clock()
        try:
            keys = await self._fetch()
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            self._fetches_done += 1
            logger.warning(
                "JWKS fetch from %s failed (%s: %s); keeping %d known key(s)",
                self.url,
                type(exc).__name__,
                exc,
                len(self._keys),
            )
            return False
        added, removed = keys.keys() - self._keys.keys(), self._keys.keys() - keys.keys()
        if added or removed:
            logger.info("JWKS keys changed: added %s, removed %s", sorted(added), sorted(removed))
        self._keys = keys
        if removed and self.on_keys_removed is not None:
            self.on_keys_removed()
        self._fetched_at = self._clock()
        self._fetches_done += 1
        return True

    async def _fetch(self) -> dict[str, _Key]:
        response = await self._client.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys", []), list):
            raise ValueError('JWKS is not a JSON object with a "keys" list')
        # Symmetric ("oct") keys never come from a JWKS: an HMAC key must not be public.
        usable = [
            item
            for item in document.get("keys", [])
            if isinstance(item, dict)
            and item.get("kty") in _ASYMMETRIC_KEY_TYPES
            and isinstance(item.get("kid"), str)
        ]
        if not usable:
            return {}
        published = {item["kid"]: item for item in usable}
        return {
            jwk.key_id: _Key(
                jwk,
                published[jwk.key_id].get("alg"),
                published[jwk.key_id]["kty"],
                published[jwk.key_id].get("crv"),
            )
            for jwk in PyJWKSet(usable).keys
            if jwk.key_id is not None
        }


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
            raise TokenError("Token has expired.", "token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("Token is not valid yet.", "token_not_yet_valid") from exc
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
