"""Cost of verifying one bearer token with a warm key cache, per algorithm.

    .venv/bin/python -m bench._token_verification

The JWKS is served by a real loopback HTTP server and fetched once; every timed call then runs
on cached keys, as the request path does. "signature" verifies a token never seen before (a
fresh `jti` each call); "repeat" verifies a token already verified (the verified-token cache).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import httpx
import jwt

from backend.auth import JwksCache, TokenVerifier
from tests.jwks_server import JwksServer, make_key

ROUNDS, CALLS = 7, 2000
SECRET = b"s" * 64


async def _per_call_us(verifier: TokenVerifier, tokens: Callable[[int], list[str]]) -> float:
    rounds = []
    for _ in range(ROUNDS):
        batch = tokens(CALLS)
        started = time.perf_counter()
        for token in batch:
            await verifier.verify(token)
        rounds.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(rounds)


def _repeated(token: str) -> Callable[[int], list[str]]:
    return lambda n: [token] * n


async def main() -> None:
    server = JwksServer(keys=[make_key(alg, f"kid-{alg}") for alg in ("EdDSA", "ES256", "RS256")])
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            cache = JwksCache(server.url, http, ttl=3600, cooldown=1, timeout=5)
            await cache.refresh()
            verifier = TokenVerifier(
                algorithms=["HS256", "EdDSA", "ES256", "RS256"], secret=SECRET, jwks=cache
            )
            now = int(time.time())
            serial = iter(range(10**9))

            def signer(alg: str) -> Callable[[int], list[str]]:
                def sign(n: int) -> list[str]:
                    out = []
                    for _ in range(n):
                        claims = {
                            "sub": "kW3b0Yz0user",
                            "iat": now,
                            "exp": now + 3600,
                            "jti": str(next(serial)),
                        }
                        if alg == "HS256":
                            out.append(jwt.encode(claims, SECRET, algorithm="HS256"))
                        else:
                            key = next(k for k in server.keys if k.alg == alg)
                            out.append(key.sign(claims))
                    return out

                return sign

            print(f"median of {ROUNDS} rounds x {CALLS} verifications, warm key cache")
            for alg in ("HS256", "EdDSA", "ES256", "RS256"):
                fresh = await _per_call_us(verifier, signer(alg))
                repeat = await _per_call_us(verifier, _repeated(signer(alg)(1)[0]))
                print(f"{alg:6} signature {fresh:7.1f} us/verify   repeat {repeat:5.1f} us/verify")
            print(f"JWKS fetches during the run: {server.requests}")
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
