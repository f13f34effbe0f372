"""One JSON encoder for every response body (orjson, UTC timestamps written with a `Z`), and how
a large body is sent to a client that may never read it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_OPTIONS = orjson.OPT_UTC_Z


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


# A body larger than this goes out in pieces of this size, each to be taken by the client within
# the app's RESPONSE_SEND_TIMEOUT_SECONDS, so a client that never reads pins one piece or two
# in the server's write buffer, not the whole page.
SEND_CHUNK_BYTES = 64 * 1024

logger = logging.getLogger("backend.responses")


class JsonResponse(Response):
    """A JSON response rendered by orjson (FastAPI's own ORJSONResponse is deprecated); bytes
    are taken as JSON already rendered."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if len(self.body) <= SEND_CHUNK_BYTES:
            await super().__call__(scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        timeout = scope["app"].state.settings.response_send_timeout_seconds
        body, size = self.body, len(self.body)
        try:
            for start in range(0, size, SEND_CHUNK_BYTES):
                end = start + SEND_CHUNK_BYTES
                # A copy, not a view: uvicorn's buffer must not keep the whole body alive.
                piece = {
                    "type": "http.response.body",
                    "body": body[start:end],
                    "more_body": end < size,
                }
                async with asyncio.timeout(timeout):  # uvicorn waits here while its buffer is full
                    await send(piece)
        except TimeoutError:
            # Abandoned: the rest is never written, and the server closes the connection.
            logger.warning(
                "a client took no %d-byte piece of a %d-byte response in %g s: abandoned",
                SEND_CHUNK_BYTES,
                size,
                timeout,
            )


def error_response(
    status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JsonResponse:
    """The API's one error shape: `{"detail": <sentence>, "code": <stable_snake_case>, ...}`."""
    return JsonResponse({"detail": detail, "code": code, **extra}, status_code, dict(headers or {}))
