"""GET /v1/hub/status: the hub's own status, for every key (hub/hubstatus.py)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from hub.api.auth import principal
from hub.api.errors import responses
from hub.api.models import HubStatus
from hub.api.orders import context_of
from hub.hubstatus import status_document

router = APIRouter(prefix="/v1/hub", tags=["hub"])


@router.get("/status", operation_id="getHubStatus", response_model=HubStatus,
            responses=responses(), summary="the hub's own status: online, last ingest, lag")
async def hub_status(request: Request, _who: Annotated[str, Depends(principal)]
                     ) -> dict[str, Any]:
    """The same document as the retained `keyop/v1/hub/status` on MQTT."""
    context = context_of(request)
    return await context.run(status_document, context.config.hub.id, context.store,
                             context.online(), time.time())
