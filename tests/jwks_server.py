"""Test helpers for the asymmetric path: real key pairs, and a real JWKS server on loopback
that can misbehave the way broken or hostile key servers do."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, fields
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


def make_key(alg: str, kid: str, *, publish_alg: bool = True, key_size: int = 2048) -> SigningKey:
    """A fresh key pair. `publish_alg=False` leaves "alg" out of the JWK, as RFC 7517 allows;
    `key_size` is for RSA keys."""
    private: Any
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg in {"ES256", "ES384"}:
        private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg in {"RS256", "PS256"}:
        private = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(alg)
    published = {**jwk, "kid": kid, "alg": alg} if publish_alg else {**jwk, "kid": kid}
    return SigningKey(kid, alg, private, published)


@dataclass
class JwksServer:
    """Serves `{"keys": [...]}` over real HTTP; tests change what it serves and read `requests`.

    Beyond `status` and `body` it misbehaves on demand: answers late (`delay`), drips its body
    a byte every `drip` seconds, sends it `repeat` times over, adds `headers` (say a
    Content-Encoding), or sends no Content-Length (`chunked`). `reset()` restores all of it."""

    keys: list[SigningKey] = field(default_factory=list)
    body: bytes | None = None  # served instead of the keys, when set
    status: int = 200
    delay: float = 0.0
    drip: float = 0.0
    repeat: int = 1
    chunked: bool = False
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    requests: int = 0
    request_headers: dict[bytes, bytes] = field(default_factory=dict)  # of the last request
    port: int = field(default=0, init=False)
    _server: uvicorn.Server | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/auth/jwks"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Serve an empty key set plainly and forget past requests: one server, many tests."""
        fresh = JwksServer()
        for spec in fields(self):
            if spec.init:
                setattr(self, spec.name, getattr(fresh, spec.name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        self.request_headers = dict(scope["headers"])
        if self.delay:
            await asyncio.sleep(self.delay)
        body = (
            self.body
            if self.body is not None
            else orjson.dumps({"keys": [key.jwk for key in self.keys]})
        )
        headers = [(b"content-type", b"application/json"), *self.headers]
        if not self.chunked:
            headers.append((b"content-length", str(len(body) * self.repeat).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        # Stop sending once the client hangs up (uvicorn then drops what it is sent, silently).
        sending = asyncio.create_task(self._send_body(send, body))
        hung_up = asyncio.create_task(_until_disconnected(receive))
        await asyncio.wait({sending, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sending, hung_up):
            task.cancel()
        await asyncio.gather(sending, hung_up, return_exceptions=True)

    async def _send_body(self, send: Send, body: bytes) -> None:
        pieces = [body[i : i + 1] for i in range(len(body))] if self.drip else [body] * self.repeat
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            if self.drip:
                await asyncio.sleep(self.drip)
        await send({"type": "http.response.body", "body": b""})

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


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
