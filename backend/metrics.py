"""Prometheus metrics at /metrics (off unless METRICS_ENABLED; optionally behind a token).

Per worker process: with `--workers N`, each worker serves its own numbers (scrape each, or
read them as a sample). Text exposition format, written here: no extra dependency.
"""

from __future__ import annotations

import hmac
import time
from bisect import bisect_left
from collections import defaultdict

import asyncpg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.responses import error_response

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request counts and latency by route template, and the database pool's use."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: defaultdict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1)
        )
        self.latency_sum: defaultdict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.latency_buckets[(method, route)][bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[(method, route)] += seconds

    def render(self, pool: asyncpg.Pool | None) -> str:
        lines = [
            "# HELP http_requests_total Requests handled, by route template and status.",
            "# TYPE http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = f'method="{method}",route="{route}",status="{status}"'
            lines.append(f"http_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP http_request_duration_seconds Time to the response's last byte.",
            "# TYPE http_request_duration_seconds histogram",
        ]
        for (method, route), counts in sorted(self.latency_buckets.items()):
            labels = f'method="{method}",route="{route}"'
            cumulative = 0
            for bound, count in zip((*BUCKETS, "+Inf"), counts, strict=True):
                cumulative += count
                lines.append(
                    f'http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {cumulative}'
                )
            lines.append(f"http_request_duration_seconds_count{{{labels}}} {cumulative}")
            total = self.latency_sum[(method, route)]
            lines.append(f"http_request_duration_seconds_sum{{{labels}}} {total:.6f}")
        if pool is not None:
            idle = pool.get_idle_size()
            lines += [
                "# HELP db_pool_connections_in_use Connections checked out of the pool.",
                "# TYPE db_pool_connections_in_use gauge",
                f"db_pool_connections_in_use {pool.get_size() - idle}",
                "# HELP db_pool_connections_idle Connections waiting in the pool.",
                "# TYPE db_pool_connections_idle gauge",
                f"db_pool_connections_idle {idle}",
            ]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path: ids stay out)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, token: str | None) -> None:
        self.app = app
        self.metrics = metrics
        # Compared as bytes: a header may hold any byte, and compare_digest refuses non-ASCII str.
        self.expected_authorization = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics":
            await self._serve(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected_authorization is not None:
            authorization = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(authorization, self.expected_authorization):
                response = error_response(
                    401,
                    "token_missing",
                    "Metrics need the METRICS_TOKEN bearer token.",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        database = getattr(scope["app"].state, "database", None)
        body = self.metrics.render(database.pool if database else None).encode()
        headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
