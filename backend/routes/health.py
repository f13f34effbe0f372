"""Liveness and readiness, for load balancers and orchestrators. No token needed."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from backend.errors import DatabaseUnavailable
from backend.responses import JsonResponse

READY_TIMEOUT_SECONDS = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up (no database call)")
async def healthz() -> JsonResponse:
    return JsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="The database answers",
    responses={503: {"description": "The database did not answer in time."}},
)
async def readyz(request: Request) -> JsonResponse:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await request.app.state.database.pool.fetchval("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailable(f"Database check failed: {type(exc).__name__}.") from exc
    return JsonResponse({"status": "ready"})
