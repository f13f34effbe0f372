"""Cost of verifying one bearer token with a warm key cache, per algorithm.

    .venv/bin/python -m bench._token_verification

The JWKS is served by a real loopback HTTP server and fetched once; every timed call then runs
on cached keys, as the request path does.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import jwt

from backend.auth import JwksCache, TokenVerifier
from tests.jwks_server import JwksServer, make_key

ROUNDS, CALLS = 7, 2000
SECRET = b"s" * 64


async def _per_call_us(verifier: TokenVerifier, token: str) -> float:
    best = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(CALLS):
            await verifier.verify(token)
        best.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(best)


async def main() -> None:
    server = JwksServer(keys=[make_key(alg, f"kid-{alg}") for alg in ("EdDSA", "ES256", "RS256")])
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            cache = JwksCache(server.url, http, ttl=3600, cooldown=1)
            await cache.refresh()
            verifier = TokenVerifier(
                algorithms=["HS256", "EdDSA", "ES256", "RS256"], secret=SECRET, jwks=cache
            )
            now = int(time.time())
            claims = {"sub": "kW3b0Yz0user", "iat": now, "exp": now + 3600}
            tokens = {"HS256": jwt.encode(claims, SECRET, algorithm="HS256")}
            tokens |= {key.alg: key.sign(claims) for key in server.keys}
            print(f"median of {ROUNDS} rounds x {CALLS} verifications, warm cache")
            for name, token in tokens.items():
                print(f"{name:6} {await _per_call_us(verifier, token):7.1f} us/verify")
            print(f"JWKS fetches during the run: {server.requests}")
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
