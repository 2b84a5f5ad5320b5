"""The hub operator's routes: `PUT /v1/admin/orders/{order}/assignment` assigns an order to
suppliers; `GET /v1/admin/webhooks` shows every webhook endpoint's delivery status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from hub.api.auth import admin
from hub.api.errors import invalid, responses
from hub.api.models import AssignmentResult
from hub.api.orders import OrderId, context_of
from sync.packet import ID_PATTERN

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class Assignment(BaseModel):
    """The suppliers a work order concerns (besides hub.yaml routes), and its due time."""

    model_config = ConfigDict(extra="forbid")

    suppliers: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(max_length=1000)
    due: datetime | None = None


@router.put("/orders/{order}/assignment", operation_id="putAssignment",
            response_model=AssignmentResult, responses=responses(),
            summary="assign a work order to suppliers")
async def put_assignment(request: Request, _who: Annotated[str, Depends(admin)],
                         order: OrderId, body: Assignment) -> dict[str, Any]:
    context = context_of(request)
    unknown = sorted(set(body.suppliers) - set(context.config.suppliers))
    if unknown:
        raise invalid("body.suppliers", f"unknown {unknown}")
    if body.due is not None and body.due.tzinfo is None:
        raise invalid("body.due", "needs a time zone (e.g. Z)")
    due = body.due.timestamp() if body.due is not None else None
    await context.run(context.store.set_assignment, order, body.suppliers, due)
    await context.run(context.reload)
    return {"workOrder": order, "suppliers": sorted(set(body.suppliers)),
            "due": None if body.due is None else body.due.isoformat()}


class WebhookEndpointStatus(BaseModel):
    """One webhook endpoint's delivery (docs/webhooks.md, "Watching deliveries")."""

    supplier: str
    name: str
    url: str
    types: list[str]
    cursor: int | None = Field(description="feed position settled last (null: never started)")
    head: int = Field(description="the supplier's newest feed position")
    lag: int | None = Field(description="positions after the cursor")
    failing: bool = Field(description="failing for webhooks.failing_after_s: the hub alert")
    failing_since: float | None = Field(description="Unix time of the outage's first failure")
    last_status: int | None = Field(description="HTTP status at the last change of health")
    last_error: str | None = Field(description="why delivery failed, at the last change")


class WebhooksStatus(BaseModel):
    webhooks: list[WebhookEndpointStatus]


@router.get("/webhooks", operation_id="listWebhooks", response_model=WebhooksStatus,
            responses=responses(), summary="webhook endpoints and their delivery status")
async def get_webhooks(request: Request, _who: Annotated[str, Depends(admin)]
                       ) -> dict[str, Any]:
    context = context_of(request)
    status = context.webhook_status
    rows = [] if status is None else await context.run(status)
    return {"webhooks": rows}
