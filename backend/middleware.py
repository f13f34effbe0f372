"""Plain ASGI middleware (BaseHTTPMiddleware costs throughput): request ids, JSON-only bodies,
HEAD answered as GET, and CORS for the web client."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend import logs
from backend.errors import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    CorsPreflightRefused,
    HeadersTooLarge,
    PayloadTooLarge,
    UnsupportedMediaType,
)

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_for(incoming: bytes) -> str:
    """The client's `X-Request-ID` when it is sane, else a new one."""
    value = incoming.decode("latin-1")
    return value if _ACCEPTABLE.fullmatch(value) else new_request_id()


def new_request_id() -> str:
    """32 random hex digits, as a uuid4's, from the random module's generator rather than the
    kernel's: a tenth of the cost, no system call. Ids need to be unique, not secret (they are
    echoed to clients and logged); the generator is seeded from os.urandom at start-up and
    again in every forked child, so workers never share a sequence."""
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    """Takes `X-Request-ID` when it is sane, makes one up otherwise, echoes it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"")
        request_id = request_id_for(incoming)
        logs.request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestLimitsMiddleware:
    """What a request may be: a request line and headers of at most MAX_HEADER_BYTES, a JSON
    body of at most MAX_BODY_BYTES (backend/errors.py, which documents both).

    Runs before routing and parsing, so a refused request costs no work: 431 for oversized
    headers (uvicorn's httptools parser has no cap of its own), 413 when Content-Length is too
    big or a chunked body grows past the limit, 415 when a body is not declared as JSON.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The whole request target counts, query string included, as in the request line.
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        header_bytes = target + sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            await HeadersTooLarge().response()(scope, receive, send)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await PayloadTooLarge().response()(scope, receive, send)
            return
        has_body = (declared is not None and declared != "0") or "transfer-encoding" in headers
        if has_body and not _is_json(headers.get("content-type", "")):
            await UnsupportedMediaType().response()(scope, receive, send)
            return

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:  # FastAPI is reading it: errors.py answers
                    raise PayloadTooLarge()
            return message

        await self.app(scope, receive_within_limit, send)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class HeadMiddleware:
    """HEAD is GET without the body (RFC 9110 9.3.2): every GET route answers it, /healthz
    included, with the GET's status and headers, Content-Length and ETag among them. Load
    balancers and uptime checkers send HEAD. Requests of any other method pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS for the web client's origins, with what our API needs allowed and
    exposed, and a refused preflight answered in our error shape."""

    def __init__(self, app: ASGIApp, allow_origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=allow_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "If-Match",
                "If-None-Match",
                "Idempotency-Key",
            ],
            expose_headers=[
                "Location",
                "Link",
                "X-Request-ID",
                "Retry-After",
                "ETag",
                "Idempotent-Replayed",
            ],
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        headers = {
            name: value for name, value in response.headers.items() if name.startswith("access-")
        }
        detail = (
            f"This cross-origin request is not allowed (its {refused}); CORS_ORIGINS lists the "
            "origins served."
        )
        return CorsPreflightRefused(detail, headers).response()
