"""GET /v1/orders, /v1/orders/{order}, /v1/orders/{order}/operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from hub.api.auth import supplier
from hub.api.context import ApiContext

router = APIRouter(prefix="/v1/orders", tags=["orders"])

# No control characters: no packet can carry them in a stored work order (the hub refuses
# them at ingest), and PostgreSQL refuses NUL in a query.
OrderId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                              description="work order id")]


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


def _limit(request: Request, limit: int | None) -> int:
    maximum = _context(request).config.api.max_limit
    if limit is None:
        return min(100, maximum)
    if limit > maximum:
        raise HTTPException(status_code=422, detail=f"limit: at most {maximum}")
    return limit


@router.get("", summary="the supplier's work orders, one page")
async def list_orders(
    request: Request,
    who: Annotated[str, Depends(supplier)],
    after: Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                                       description="the `next` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size (default 100, at most "
                                                         "api.max_limit)")] = None,
) -> dict[str, Any]:
    context = _context(request)
    found, following = await context.run(context.orders_of, who, after, _limit(request, limit))
    return {"orders": found, "next": following}


async def _order(request: Request, who: str, order: str) -> dict[str, Any]:
    context = _context(request)
    operations = await context.run(context.order, who, order)
    if not operations:
        # The same answer whether the order does not exist or concerns someone else.
        raise HTTPException(status_code=404, detail="no such work order")
    return context.summary(order, operations)


@router.get("/{order}", summary="one work order and its operations")
async def get_order(request: Request, who: Annotated[str, Depends(supplier)],
                    order: OrderId) -> dict[str, Any]:
    return await _order(request, who, order)


@router.get("/{order}/operations", summary="the operations of one work order")
async def get_operations(request: Request, who: Annotated[str, Depends(supplier)],
                         order: OrderId) -> dict[str, Any]:
    return {"operations": (await _order(request, who, order))["operations"]}
