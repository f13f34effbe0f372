"""The optional per-user rate limit (RATE_LIMIT_PER_MINUTE), counted in RATE_LIMIT_STORAGE_URL.

The `limits` library counts. `memory://` (the default) keeps the counts in this process: N
workers or instances allow up to N times the figure. `async+redis://` (Redis, Valkey, Upstash;
`async+rediss://` with TLS) keeps them in one place, so the limit holds across every worker and
instance.

Strategy: limits' sliding window counter. Like the token bucket it replaces, it lets a user
burst up to N and then refills steadily, N a minute (from the next minute window on); it keeps
two counters per user and costs one Redis round trip per request (one Lua script), plus one for
a refused request's Retry-After. The moving window is exact but keeps N timestamps per user and,
after a burst, refuses for a whole minute and then lets a second burst through at once; the
fixed window lets up to 2N through around a window's edge.

Fail open: when the storage fails (refused, timed out, an error reply) the request is served
unchecked, the failure is logged (at most once a minute) and counted (`on_unchecked`: the
metrics counter when metrics are on), and the storage is left alone for a second, so an outage
costs a request at most one socket timeout and most requests nothing.

It must not: block the event loop, turn a storage failure into an error response, or exist at
all when the limit is off (the dependency then skips it: requests pay nothing).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

if TYPE_CHECKING:  # redis-py is imported for a Redis URL only: it loads OpenTelemetry's SDK
    from redis.asyncio import ConnectionPool

logger = logging.getLogger(__name__)

# For a storage in the same region; the URL's own query (`?socket_timeout=1`) wins over these.
CONNECT_TIMEOUT_SECONDS = 0.5
COMMAND_TIMEOUT_SECONDS = 0.25
# After a failure the storage is left alone this long; requests meanwhile go unchecked at once.
RETRY_STORAGE_AFTER_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
SWEEP_EVERY_SECONDS = 1.0
KEY_PREFIX = "todo-api"

# RATE_LIMIT_STORAGE_URL's schemes (limits' names, `async+` optional) -> redis-py's scheme.
_REDIS_SCHEMES = {"redis": "redis", "rediss": "rediss", "redis+unix": "unix"}
_ACCEPTED = "memory:// or async+redis://host:port (async+rediss:// with TLS, async+redis+unix://)"


def storage_uri(url: str) -> str:
    """limits' async storage URI for RATE_LIMIT_STORAGE_URL; ValueError says what is wrong
    without repeating the URL (it may hold a password)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(f"must be {_ACCEPTED}")
    scheme = scheme.lower().removeprefix("async+")
    if scheme != "memory" and scheme not in _REDIS_SCHEMES:
        raise ValueError(f"must be {_ACCEPTED}, not {scheme}://")
    parts = urlsplit(url)
    if scheme == "redis+unix" and not parts.path:
        raise ValueError("names no socket path")
    if scheme in {"redis", "rediss"}:
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port is not a number from 0 to 65535") from None
        if not parts.hostname or port is None:  # limits wants both
            raise ValueError("needs host:port (Redis listens on 6379 unless told otherwise)")
    return f"async+{scheme}://{rest}"


class SweepingMemoryStorage(MemoryStorage):
    """limits' in-process storage, sweeping expired counters at most once a second.

    limits starts a sweep of every key after each hit once the last sweep has ended: with
    10,000 users seen in two minutes, ~0.45 ms a request, growing with the users. Expired
    counters still read as zero in between (limits checks expiry on every read).
    """

    _next_sweep = 0.0

    # Overrides limits' private (name-mangled) scheduler: the only way in; pinned by uv.lock.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        if (now := time.monotonic()) >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_SECONDS
            await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


class RateLimiter:
    """RATE_LIMIT_PER_MINUTE requests per user, counted in the storage `storage_url` names."""

    def __init__(
        self,
        per_minute: int,
        storage_url: str = "memory://",
        on_unchecked: Callable[[], None] | None = None,
    ) -> None:
        uri = storage_uri(storage_url)
        self.on_unchecked = on_unchecked  # called for each request served unchecked
        self._item = RateLimitItemPerMinute(per_minute)
        self._pool: ConnectionPool | None = None
        self._memory: SweepingMemoryStorage | None = None
        self._storage_errors: tuple[type[Exception], ...] = ()  # what fails open
        if uri.startswith("async+memory:"):
            self._memory = SweepingMemoryStorage()
            storage: MemoryStorage | RedisStorage = self._memory
        else:
            from redis.asyncio import ConnectionPool
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError

            scheme, rest = uri.removeprefix("async+").split("://", 1)
            # Our own pool: its timeouts bound an outage's cost, and with no retries (redis-py's
            # client defaults to 3, with backoffs of up to seconds) a failure is known at once.
            self._pool = ConnectionPool.from_url(
                f"{_REDIS_SCHEMES[scheme]}://{rest}",
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=COMMAND_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
            # limits types its options as scalars, though it documents `connection_pool`.
            options: dict[str, Any] = {"connection_pool": self._pool}
            storage = RedisStorage(uri, implementation="redispy", key_prefix=KEY_PREFIX, **options)
            self._storage_errors = (RedisError,)  # refused, timed out, an error reply
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._retry_storage_at: float | None = None  # set while the storage is failing
        self._unchecked = 0  # requests served unchecked in this outage
        self._warned = False  # in this outage
        self._warned_at = -math.inf

    async def retry_after(self, user_id: str) -> float | None:
        """Count one request of this user: None if allowed (or unchecked), else seconds to wait."""
        if self._retry_storage_at is not None and time.monotonic() < self._retry_storage_at:
            self._serve_unchecked()
            return None
        try:
            if await self._strategy.hit(self._item, user_id):
                refused_until = None
            else:
                refused_until = (await self._strategy.get_window_stats(self._item, user_id))[0]
        except self._storage_errors as exc:
            self._storage_failed(exc)
            return None
        if self._retry_storage_at is not None:
            self._storage_answers()
        return None if refused_until is None else max(0.0, refused_until - time.time())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._memory is not None and self._memory.timer is not None:
            self._memory.timer.cancel()

    def _serve_unchecked(self) -> None:
        self._unchecked += 1
        if self.on_unchecked is not None:
            self.on_unchecked()

    def _storage_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._retry_storage_at = now + RETRY_STORAGE_AFTER_SECONDS
        self._serve_unchecked()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            self._warned = True
            logger.warning(
                "rate-limit storage failed (%s: %s); serving requests without the limit "
                "(%d so far) until it answers",
                type(exc).__name__,
                exc,
                self._unchecked,
            )

    def _storage_answers(self) -> None:
        if self._warned:  # a flapping storage logs a pair of lines a minute, not one a second
            logger.info(
                "rate-limit storage answers again; %d requests were served without the limit",
                self._unchecked,
            )
        self._retry_storage_at = None
        self._unchecked = 0
        self._warned = False
