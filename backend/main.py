"""The application factory: routers, error handlers, middleware, and the resources' lifespan."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware import Middleware

from backend.admission import Admission, AdmissionLimits, AdmissionMiddleware
from backend.auth import TokenVerifier
from backend.config import Settings, get_settings
from backend.db import Database, EmbeddedPostgres, embedded_data_dir
from backend.errors import ErrorBoundaryMiddleware, install_error_handlers
from backend.logs import configure_logging
from backend.middleware import (
    CorsMiddleware,
    HeadMiddleware,
    RequestIdMiddleware,
    RequestLimitsMiddleware,
)
from backend.ratelimit import RateLimiter
from backend.routes import health, tasks

if TYPE_CHECKING:
    from backend.metrics import Metrics

logger = logging.getLogger("backend")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        if app.state.metrics is not None:  # this worker's live gauges leave with it
            stack.callback(app.state.metrics.worker_exited)
        if (limiter := app.state.rate_limiter) is not None:
            stack.push_async_callback(limiter.aclose)
        database_url = settings.database_url
        if database_url is None:
            # Starting PostgreSQL blocks for a second or two: keep it off the event loop.
            embedded = await asyncio.to_thread(EmbeddedPostgres, embedded_data_dir(settings))
            stack.callback(embedded.stop)
            database_url = embedded.url()
            logger.info("using embedded PostgreSQL in %s", embedded.data_dir)

        database = await Database.open(settings, database_url)
        stack.push_async_callback(database.close)  # waits for in-flight requests' connections

        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=settings.jwks_fetch_timeout_seconds, follow_redirects=False)
        )
        verifier = TokenVerifier.from_settings(settings, http)
        if verifier.jwks is not None:
            stack.push_async_callback(verifier.jwks.aclose)
            # Never fetched, so stale: the first fetch starts in the background. Serving never
            # waits on the key server; a request that needs a key awaits this same fetch.
            verifier.jwks.refresh_if_stale()

        app.state.database = database
        app.state.verifier = verifier
        # What start-up built lives as long as the process: move it out of the collector's
        # sight, so full collections under load walk only what requests allocate.
        gc.collect()
        gc.freeze()
        _return_large_blocks_to_the_system()
        yield


def _return_large_blocks_to_the_system() -> None:
    """glibc raises its mmap threshold after each large block it frees (up to 32 MiB); past that,
    large bodies (a list page) come from the heap, and once freed their memory stays with the
    process. A fixed threshold keeps every block over 128 KiB mapped on its own, so that freeing
    it gives it back: memory that slow clients made us hold comes back when they are dropped."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): its allocator has no such threshold
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _operation_id(route: APIRoute) -> str:
    """The endpoint function's name in camelCase (`list_tasks` -> `listTasks`): generated clients
    name their functions after it, so it changes only when the function is renamed."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Without `settings`, they are read from the environment and `.env`."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    metrics = None
    if settings.metrics_enabled:
        # Imported only when on: it decides where several workers share their numbers.
        from backend.metrics import Metrics, Workers

        metrics = Metrics(Workers.of_this_process(settings.prometheus_multiproc_dir))
    limits = AdmissionLimits.from_settings(settings)
    admission = Admission(limits) if limits is not None else None
    app = FastAPI(
        title="Todo API",
        version="0.1.0",
        summary="Per-user tasks for a Better Auth web client.",
        lifespan=_lifespan,
        middleware=_middleware(settings, metrics, admission),  # outermost first
        generate_unique_id_function=_operation_id,
        # FastAPI's own OpenTelemetry hooks ask the global providers on every request; traces,
        # when on, come from backend/tracing.py's instrumentation instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.admission = admission  # the parser door (AdmissionHttpToolsProtocol) finds it here
    per_minute = settings.rate_limit_per_minute
    limiter = RateLimiter(per_minute, settings.rate_limit_storage_url) if per_minute else None
    if limiter is not None and metrics is not None:
        limiter.on_unchecked = metrics.rate_limit_storage_errors.inc
    if admission is not None and metrics is not None:  # both doors' refusals, counted once
        admission.on_refused = metrics.requests_shed.inc
    app.state.rate_limiter = limiter
    app.include_router(tasks.router)
    app.include_router(health.router)
    install_error_handlers(app)
    if settings.otel_exporter_otlp_endpoint is not None:
        from backend import tracing  # the `otel` extra; never imported when tracing is off

        tracing.instrument(app, settings)
    return app


def _middleware(
    settings: Settings, metrics: Metrics | None, admission: Admission | None
) -> list[Middleware]:
    """The plain ASGI layers, outermost first; a feature that is off adds no layer."""
    layers = [Middleware(RequestIdMiddleware)]  # every response carries the id
    if metrics is not None:
        from backend.metrics import MetricsMiddleware

        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        layers.append(Middleware(MetricsMiddleware, metrics=metrics, token=token))
    if settings.cors_origins:
        layers.append(Middleware(CorsMiddleware, allow_origins=settings.cors_origins))
    if admission is not None:  # inside metrics (which count its refusals) and CORS (it labels them)
        layers.append(Middleware(AdmissionMiddleware, admission=admission))
    layers += [
        Middleware(ErrorBoundaryMiddleware),  # inside CORS: a browser can read a 500 too
        Middleware(RequestLimitsMiddleware),
        Middleware(HeadMiddleware),
    ]
    return layers
