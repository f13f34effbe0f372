"""Optional OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT is set (the SDK's own
variable, as are OTEL_SERVICE_NAME and the other OTEL_* settings the exporter reads, such as
OTEL_EXPORTER_OTLP_HEADERS).

Each request becomes a server span named by its route template (FastAPI's instrumentation) with
a child span for its SQL statement (asyncpg's), exported in batches over OTLP/HTTP; log records
carry the trace id beside the request id. Installed with the `otel` extra. When the variable is
unset, `create_app` never imports this module: tracing costs nothing.
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from backend import logs
from backend.config import Settings


def instrument(
    app: FastAPI, settings: Settings, processor: SpanProcessor | None = None
) -> TracerProvider:
    """Trace `app`'s requests and every asyncpg statement; `processor` replaces the OTLP export
    (tests pass an in-memory one)."""
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The variable names the collector; traces go to its /v1/traces, as the SDK does it.
        endpoint = f"{(settings.otel_exporter_otlp_endpoint or '').rstrip('/')}/v1/traces"
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    resource = Resource.create({SERVICE_NAME: settings.otel_service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    # The ASGI layer's own "http send"/"http receive" spans are noise at one per message.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    asyncpg_instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if not asyncpg_instrumentor.is_instrumented_by_opentelemetry:  # patches asyncpg, once
        asyncpg_instrumentor.instrument(tracer_provider=provider)
    logs.trace_id = _current_trace_id
    return provider


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
