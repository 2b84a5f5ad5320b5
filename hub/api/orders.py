"""GET /v1/orders, /v1/orders/{order}, /v1/orders/{order}/operations (hub/orders.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from hub.api.auth import supplier
from hub.api.context import ApiContext
from hub.api.errors import invalid, responses
from hub.api.models import AfterQuery, LimitQuery, OperationList, OrderDetail, OrderPage
from hub.orders import OrderFilter
from hub.risk import Risk

router = APIRouter(prefix="/v1/orders", tags=["orders"])

# No control characters: no packet can carry them in a stored work order (the hub refuses
# them at ingest), and PostgreSQL refuses NUL in a query.
OrderId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                              description="work order id")]
NOT_FOUND = "no such work order"


def context_of(request: Request) -> ApiContext:
    """The API's shared context (hub/api/context.py), for every route module."""
    context: ApiContext = request.app.state.context
    return context


def page_limit(request: Request, limit: int | None) -> int:
    """A page's size: `limit`, 100 when absent, never above `api.max_limit` (422)."""
    maximum = context_of(request).config.api.max_limit
    if limit is None:
        return min(100, maximum)
    if limit > maximum:
        raise invalid("query.limit", f"at most {maximum}")
    return limit


@router.get("", operation_id="listOrders", response_model=OrderPage, responses=responses(),
            summary="your work orders, one page, by work order id")
async def list_orders(
    request: Request,
    who: Annotated[str, Depends(supplier)],
    after: AfterQuery = None,
    limit: LimitQuery = None,
    status: Annotated[Literal["open", "closed", "all"],
                      Query(description="open or closed orders only")] = "all",
    updated_since: Annotated[datetime | None, Query(
        description="only orders changed at or after this time (RFC 3339 with an offset)")]
    = None,
    risk: Annotated[list[Risk] | None, Query(
        description="only orders with one of these delay-risk statuses (repeat the "
                    "parameter: `risk=at_risk&risk=late`)")] = None,
) -> dict[str, Any]:
    """Assigned orders are listed before their first event (no operations yet). `next`
    moves past every order looked at: a short page with a `next` is not the end."""
    context = context_of(request)
    if updated_since is not None and updated_since.tzinfo is None:
        raise invalid("query.updated_since", "needs a time zone (e.g. Z)")
    wanted = OrderFilter(
        closed=None if status == "all" else status == "closed",
        updated_since=None if updated_since is None else updated_since.timestamp(),
        risks=frozenset(risk or ()))
    found, following = await context.run(context.orders.page, who, wanted, after,
                                         page_limit(request, limit))
    return {"orders": found, "next": following}


async def _order(request: Request, who: str, order: str) -> dict[str, Any]:
    context = context_of(request)
    found = await context.run(context.orders.one, who, order)
    if found is None:
        # The same answer whether the order does not exist or concerns someone else.
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return found


@router.get("/{order}", operation_id="getOrder", response_model=OrderDetail,
            responses=responses(404), summary="one work order, its operations and timeline")
async def get_order(request: Request, who: Annotated[str, Depends(supplier)],
                    order: OrderId) -> dict[str, Any]:
    """`timeline` lists, per operation, its started/paused/resumed/completed/aborted events
    by event time and the intervals it ran."""
    return await _order(request, who, order)


@router.get("/{order}/operations", operation_id="listOrderOperations",
            response_model=OperationList, responses=responses(404),
            summary="the operations of one work order")
async def get_operations(request: Request, who: Annotated[str, Depends(supplier)],
                         order: OrderId) -> dict[str, Any]:
    return {"operations": (await _order(request, who, order))["operations"]}
