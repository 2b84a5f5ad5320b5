"""GET /metrics: the hub process's Prometheus metrics, for the operator's admin key only
(per-supplier fan-out lag names every supplier)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.api.auth import admin
from hub.api.errors import responses
from hub.api.orders import context_of

router = APIRouter(tags=["operations"])


@router.get("/metrics", operation_id="getMetrics", summary="Prometheus metrics (admin key)",
            response_class=Response,
            responses={**responses(503), 200: {
                "description": "the Prometheus text format",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
async def metrics(request: Request, _who: Annotated[str, Depends(admin)]) -> Response:
    context = context_of(request)
    registry = context.metrics
    if registry is None:
        raise HTTPException(status_code=503, detail="metrics not available yet")
    # Collecting reads the store: off the event loop, on the API's threads.
    body = await context.run(generate_latest, registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
