"""Test helpers for the asymmetric path: real key pairs, and a real JWKS server on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.types import Receive, Scope, Send


@dataclass
class SigningKey:
    """A private key that signs like Better Auth's JWT plugin, and its public JWK."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        now = int(time.time())
        # A unique jti, so two tokens signed in the same second still differ (as in real life)
        # and each one exercises the key lookup rather than the verified-token cache.
        payload = {"sub": "ba-user", "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex}
        payload.update(claims or {})
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            self.private,
            algorithm=self.alg,
            headers={"kid": self.kid, **header},
        )


def make_key(alg: str, kid: str, *, publish_alg: bool = True) -> SigningKey:
    """A fresh key pair. `publish_alg=False` leaves "alg" out of the JWK, as RFC 7517 allows."""
    private: Any
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg in {"ES256", "ES384"}:
        private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg in {"RS256", "PS256"}:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(alg)
    published = {**jwk, "kid": kid, "alg": alg} if publish_alg else {**jwk, "kid": kid}
    return SigningKey(kid, alg, private, published)


@dataclass
class JwksServer:
    """Serves `{"keys": [...]}` over real HTTP; tests change `keys`/`status` and read `requests`."""

    keys: list[SigningKey] = field(default_factory=list)
    body: bytes | None = None  # served instead of the keys, when set
    accept: bytes | None = None  # the Accept header of the last request
    status: int = 200
    delay: float = 0.0
    requests: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/auth/jwks"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        self.accept = dict(scope["headers"]).get(b"accept")
        if self.delay:
            await asyncio.sleep(self.delay)
        body = self.body or orjson.dumps({"keys": [key.jwk for key in self.keys]})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def start(self, port: int = 0) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=port, lifespan="off", log_level="error"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 (uvicorn exposes only this flag)
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        assert self._task is not None
        self._server.should_exit = True
        await self._task
