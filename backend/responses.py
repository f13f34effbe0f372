"""One JSON encoder for every response body: orjson, UTC timestamps written with a `Z`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_UTC_Z


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


class JsonResponse(Response):
    """A JSON response rendered by orjson (FastAPI's own ORJSONResponse is deprecated)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_response(
    status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JsonResponse:
    """The API's one error shape: `{"detail": <sentence>, "code": <stable_snake_case>, ...}`."""
    return JsonResponse({"detail": detail, "code": code, **extra}, status_code, dict(headers or {}))
