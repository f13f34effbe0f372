"""Cost of verifying one bearer token with a warm key cache, per algorithm.

    .venv/bin/python -m bench._token_verification               # pyperf: 20 worker processes
    .venv/bin/python -m bench._token_verification --fast -o after.json

The JWKS is served by a real loopback HTTP server and fetched once per worker process; every
timed call then runs on cached keys, as the request path does (a second fetch stops the run).
"signature" verifies tokens never seen by their verifier (distinct `jti`s, each verifier fresh),
"repeat" one token already verified (the verified-token cache). pyperf (the bench extra)
calibrates the loop count, runs it in fresh worker processes and prints mean +- std dev per
verification. Before/after a change: `-o before.json` on the old code, `-o after.json` on the
new, then `.venv/bin/python -m pyperf compare_to before.json after.json --table` (the same names
pair up; it says which differences are significant). It must time nothing but `verify`.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import count

import httpx
import jwt
import pyperf

from backend.auth import AuthUser, JwksCache, TokenVerifier
from tests.jwks_server import JwksServer, make_key

ALGORITHMS = ("HS256", "EdDSA", "ES256", "RS256")
SECRET = b"s" * 64
POOL = 500  # distinct tokens signed per algorithm and worker (RS256 signs in ~1 ms)


@dataclass
class _Keys:
    """One worker process's JWKS server and warm key cache, on its own event loop."""

    loop: asyncio.AbstractEventLoop
    server: JwksServer
    cache: JwksCache

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(algorithms=ALGORITHMS, secret=SECRET, jwks=self.cache)


@functools.cache
def _keys() -> _Keys:
    loop = asyncio.new_event_loop()
    server = JwksServer(keys=[make_key(alg, f"kid-{alg}") for alg in ALGORITHMS[1:]])
    http = httpx.AsyncClient()

    async def start() -> JwksCache:
        await server.start()
        cache = JwksCache(server.url, http, ttl=3600, cooldown=1, timeout=5)
        await cache.refresh()
        return cache

    async def stop() -> None:
        await http.aclose()
        await server.stop()

    keys = _Keys(loop, server, loop.run_until_complete(start()))
    atexit.register(lambda: loop.run_until_complete(stop()))
    return keys


_serial = count()


def _sign(alg: str) -> str:
    now = int(time.time())
    claims = {"sub": "kW3b0Yz0user", "iat": now, "exp": now + 3600, "jti": str(next(_serial))}
    if alg == "HS256":
        return jwt.encode(claims, SECRET, algorithm="HS256")
    return next(k for k in _keys().server.keys if k.alg == alg).sign(claims)


@functools.cache
def _pool(alg: str) -> list[str]:
    return [_sign(alg) for _ in range(POOL)]


def _time_fresh(loops: int, alg: str) -> float:
    """pyperf's time function: `loops` verifications, each a signature check."""
    keys, tokens = _keys(), _pool(alg)
    # A verifier sees each token once: none is answered from its verified-token cache.
    verifiers = [keys.verifier() for _ in range(loops // POOL + 1)]
    calls = [(verifiers[n // POOL].verify, tokens[n % POOL]) for n in range(loops)]
    return keys.loop.run_until_complete(_timed(calls, keys))


def _time_repeat(loops: int, alg: str) -> float:
    """pyperf's time function: `loops` verifications of one token already verified."""
    keys, token = _keys(), _pool(alg)[0]
    verifier = keys.verifier()
    keys.loop.run_until_complete(verifier.verify(token))
    return keys.loop.run_until_complete(_timed([(verifier.verify, token)] * loops, keys))


async def _timed(
    calls: Sequence[tuple[Callable[[str], Awaitable[AuthUser]], str]], keys: _Keys
) -> float:
    started = time.perf_counter()
    for verify, token in calls:
        await verify(token)
    elapsed = time.perf_counter() - started
    if keys.server.requests != 1:  # the figure would include a fetch, not only verifying
        raise RuntimeError(f"the JWKS was fetched {keys.server.requests} times, not once")
    return elapsed


def main() -> None:
    runner = pyperf.Runner(program_args=("-m", "bench._token_verification"))  # workers alike
    runner.metadata["description"] = "bearer token verification, warm key cache; time per call"
    for alg in ALGORITHMS:
        runner.bench_time_func(f"{alg} signature", _time_fresh, alg)
        runner.bench_time_func(f"{alg} repeat", _time_repeat, alg)


if __name__ == "__main__":
    main()
