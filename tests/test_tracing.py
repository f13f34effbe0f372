"""OpenTelemetry traces (the `otel` extra), recorded by the SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from backend import logs, tracing
from backend.config import Settings
from backend.logs import configure_logging
from backend.main import create_app
from tests.conftest import DATABASE_DOWN, ROOT, SECRET, Headers, app_client

READ_ROUTE = "GET /api/{user_id}/tasks/{task_id}"


@contextmanager
def _traced(app: FastAPI) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.instrument(app, app.state.settings, SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:  # asyncpg is patched process-wide: undo it for the other tests
        FastAPIInstrumentor.uninstrument_app(app)
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        logs.trace_id = None


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


async def test_a_request_is_a_server_span_with_its_statement_as_child(
    settings: Settings, clean_tables: None, alice: Headers
) -> None:
    app = create_app(settings)
    with _traced(app) as exporter:
        async with app_client(app) as client:
            created = await client.post("/api/alice/tasks", headers=alice, json={"title": "t"})
            exporter.clear()
            read = await client.get(created.headers["Location"], headers=alice)
    assert read.status_code == 200

    spans = exporter.get_finished_spans()
    (server,) = _by_kind(spans, SpanKind.SERVER)
    assert server.name == READ_ROUTE  # the template: no user id or task id in span names
    (statement,) = _by_kind(spans, SpanKind.CLIENT)
    assert statement.parent is not None
    assert statement.parent.span_id == server.context.span_id
    assert statement.context.trace_id == server.context.trace_id
    query: Any = statement.attributes.get("db.statement") if statement.attributes else None
    assert str(query).startswith("SELECT tasks.id, tasks.user_id, tasks.title")


async def test_log_records_carry_the_trace_id(
    settings: Settings, alice: Headers, capfd: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings.model_copy(update={**DATABASE_DOWN, "log_format": "json"}))
    with _traced(app) as exporter:
        async with app_client(app) as client:
            headers = {"X-Request-ID": "trace-me", **alice}
            assert (await client.get("/api/alice/tasks", headers=headers)).status_code == 503
    configure_logging("WARNING", "text")

    (server,) = _by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    (outage,) = [line for line in lines if line["msg"].startswith("database unreachable")]
    assert outage["request_id"] == "trace-me"
    assert outage["trace_id"] == format(server.context.trace_id, "032x")


def test_tracing_is_not_even_imported_when_off() -> None:
    # create_app loads backend.tracing, the SDK and the instrumentations only when
    # OTEL_EXPORTER_OTLP_ENDPOINT is set. (FastAPI itself imports the OpenTelemetry *API*
    # whenever it is installed, for its own opt-in telemetry; the production install, without
    # the `otel` extra, has none of it.)
    probe = (
        "import sys; from backend.config import Settings; from backend.main import create_app; "
        f"create_app(Settings(_env_file=None, better_auth_secret={SECRET!r})); "
        "print(sorted(m for m in sys.modules if m == 'backend.tracing' "
        "or m.startswith(('opentelemetry.sdk', 'opentelemetry.instrumentation'))))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    assert result.stdout.strip() == "[]"
