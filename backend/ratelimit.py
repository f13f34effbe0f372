"""An optional per-user rate limit (RATE_LIMIT_PER_MINUTE), kept in this process's memory.

A token bucket per user: bursts up to the per-minute figure, refilled continuously. With N
workers the effective limit is up to N times the setting; a shared limit needs a shared store
(Redis, the proxy), which this service deliberately does not require.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_TRACKED_USERS = 100_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def retry_after(self, user_id: str) -> float | None:
        """Take one token for this user: None if allowed, else seconds until one is back."""
        now = self._clock()
        tokens, at = self._buckets.pop(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.refill_per_second)
        allowed = tokens >= 1.0
        self._buckets[user_id] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED_USERS:
            self._buckets.popitem(last=False)  # the least recently seen user starts afresh
        return None if allowed else (1.0 - tokens) / self.refill_per_second
