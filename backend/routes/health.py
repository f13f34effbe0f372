"""Liveness and readiness, for load balancers and orchestrators. No token needed.

Readiness also says when the instance is leaving: a server that drains before it stops
(backend/serve.py) sets `DRAINING` in the ASGI lifespan state, which the server copies into
every request's scope, and /readyz then answers 503 without asking the database.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from backend.errors import DatabaseUnavailable, Draining, documented
from backend.models import HealthOut, ReadyOut
from backend.responses import JsonResponse
from backend.serve import DRAINING

READY_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="The process is up (no database call)")
async def healthz() -> JsonResponse:
    return JsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Ready for traffic: the database answers and the instance is not draining",
    responses=documented(DatabaseUnavailable, Draining),
)
async def readyz(request: Request) -> JsonResponse:
    if request.scope.get("state", {}).get(DRAINING):
        raise Draining()
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app.state.database.pool.fetchval("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailable(f"Database check failed: {type(exc).__name__}.") from exc
    return JsonResponse({"status": "ready"})
