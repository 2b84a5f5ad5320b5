"""`/api/health` (liveness) and `/api/ready` (readiness, with the reasons): no API key needed.

Ready means the database answers and, when the process ingests or fans out, the broker is
connected. The hub process tells the context how to see its broker (`ApiContext.broker_up`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from hub.api.context import ApiContext

router = APIRouter()

PATHS = frozenset({"/api/health", "/api/ready"})
"""Served without an API key (a load balancer or systemd probe has none)."""


@router.get("/api/health", include_in_schema=False)
async def health() -> dict[str, Any]:
    """The process and its event loop answer."""
    return {"status": "ok"}


@router.get("/api/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    context: ApiContext = request.app.state.context
    reasons = []
    if context.broker_up is not None and not context.broker_up():
        reasons.append("broker not connected")
    try:
        await context.run(context.store.ping)
    except SQLAlchemyError as error:
        reasons.append(f"database: {str(error).splitlines()[0][:200]}")
    return JSONResponse({"ready": not reasons, "reasons": reasons},
                        status_code=503 if reasons else 200)
