"""Liveness and readiness, for load balancers and orchestrators. No token needed."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from backend.errors import DatabaseUnavailable, documented
from backend.models import HealthOut, ReadyOut
from backend.responses import JsonResponse

READY_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="The process is up (no database call)")
async def healthz() -> JsonResponse:
    return JsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="The database answers",
    responses=documented(DatabaseUnavailable),
)
async def readyz(request: Request) -> JsonResponse:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app.state.database.pool.fetchval("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailable(f"Database check failed: {type(exc).__name__}.") from exc
    return JsonResponse({"status": "ready"})
