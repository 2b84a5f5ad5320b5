"""The board's pages and the fragments the page's script fetches when an event arrives."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from hub.api.context import ApiContext
from hub.api.orders import OrderId
from hub.board import source
from hub.board.health import edge_health
from hub.board.sessions import Session
from hub.board.timeline import gantt, reason_of, timeline_events
from hub.board.view import Row, columns, open_alerts, paused_ids, row_of
from hub.board.web import HEADERS, board_of, current, page, visible

router = APIRouter(prefix="/board", include_in_schema=False)
Current = Annotated[Session, Depends(current)]
# Orders one fragment request may ask for.
ROWS_MAX = 200
Search = Annotated[str, Query(max_length=128)]


def _rows(context: ApiContext, supplier: str, orders: list[dict[str, Any]]
          ) -> tuple[list[Row], list[Any]]:
    alerts = open_alerts(source.alerts(context, supplier))
    paused = paused_ids(orders)
    events = source.feed_events(context, supplier, [o["workOrder"] for o in orders], paused) \
        if paused else {}
    return [row_of(order, alerts, events) for order in orders], alerts


def matches(row: Row, show: str, at_risk: bool, q: str) -> bool:
    """The filters: open/closed/all, at risk only (at risk, late or missed), order search."""
    if (show == "open" and row.closed) or (show == "closed" and not row.closed):
        return False
    if at_risk and row.risk not in ("at_risk", "late", "missed"):
        return False
    return not q or q.casefold() in row.work_order.casefold()


def _board(context: ApiContext, supplier: str, show: str, at_risk: bool, q: str
           ) -> dict[str, Any]:
    # The feed position first: whatever is appended after it reaches the page by the stream.
    cursor = str(context.feed.head(supplier))
    rows, alerts = _rows(context, supplier, source.orders(context, supplier))
    shown = [row for row in rows if matches(row, show, at_risk, q)]
    return {"rows": shown, "all": len(rows), "alerts": alerts, "cursor": cursor,
            "columns": columns(rows, context.config.board.key_operations)}


@router.get("")
@router.get("/")
async def home(session: Current) -> Response:
    target = "/board/plant" if session.plant else f"/board/s/{session.supplier}"
    return RedirectResponse(target, status_code=303, headers=HEADERS)


@router.get("/s/{supplier}")
async def supplier_board(request: Request, session: Current, supplier: str,
                         show: Annotated[str, Query(pattern="^(open|closed|all)$")] = "open",
                         risk: bool = False, q: Search = "") -> HTMLResponse:
    name = visible(session, supplier, request)
    context = board_of(request).context
    values = await context.run(_board, context, name, show, risk, q)
    return page(request, "supplier.html", {
        **values, "session": session, "supplier": name, "show": show, "risk": risk, "q": q,
        "suppliers": list(context.config.suppliers)})


@router.get("/s/{supplier}/rows")
async def rows(request: Request, session: Current, supplier: str,
               o: Annotated[list[str], Query(max_length=ROWS_MAX)]) -> HTMLResponse:
    """The rows of the named orders (the ones an event changed), as the page draws them."""
    name = visible(session, supplier, request)
    context = board_of(request).context

    def read() -> dict[str, Any]:
        orders = source.orders_named(context, name, [w[:128] for w in o])
        found, _ = _rows(context, name, orders)
        known = {row.work_order for row in found}
        every = columns(found, context.config.board.key_operations)
        return {"rows": found, "columns": every, "gone": [w for w in o if w not in known]}

    return page(request, "rows.html", {**await context.run(read), "supplier": name})


@router.get("/s/{supplier}/alerts")
async def alerts(request: Request, session: Current, supplier: str) -> HTMLResponse:
    name = visible(session, supplier, request)
    context = board_of(request).context
    found = await context.run(lambda: open_alerts(source.alerts(context, name)))
    return page(request, "alerts.html", {"alerts": found, "supplier": name})


@router.get("/s/{supplier}/orders/{order}")
async def order(request: Request, session: Current, supplier: str, order: OrderId
                ) -> HTMLResponse:
    """One order's operations against its due time (404 like the API's for an order the
    supplier is not concerned by)."""
    name = visible(session, supplier, request)
    context = board_of(request).context

    def read() -> dict[str, Any] | None:
        found = source.order(context, name, order)
        if found is None:
            return None
        row, _ = _rows(context, name, [found])
        events = timeline_events(found["timeline"])
        reasons = source.feed_events(context, name, [order], [
            e["id"] for e in events if e["type"] == "keyop.operation.paused"])
        return {"row": row[0], "chart": gantt(row[0], found["timeline"], time.time()),
                "events": [{**e, "reason": reason_of(reasons.get(e["id"]))} for e in events]}

    values = await context.run(read)
    if values is None:
        return page(request, "missing.html", {"supplier": name, "session": session}, 404)
    return page(request, "order.html", {**values, "supplier": name, "session": session,
                                        "suppliers": list(context.config.suppliers)})


@router.get("/plant")
async def plant(request: Request, session: Current) -> Response:
    """The coordinator's view: every supplier, and the edge's health."""
    if not session.plant:
        return RedirectResponse(f"/board/s/{session.supplier}", status_code=303,
                                headers=HEADERS)
    context = board_of(request).context

    def read() -> dict[str, Any]:
        counts = {}
        for name in context.config.suppliers:
            rows, alerts = _rows(context, name, source.orders(context, name))
            counts[name] = {"orders": len(rows), "open": sum(not r.closed for r in rows),
                            "risky": sum(r.risk in ("at_risk", "late") for r in rows),
                            "alerts": len(alerts)}
        return {"counts": counts, "health": edge_health(context.store, context.config)}

    return page(request, "plant.html", {**await context.run(read), "session": session,
                                        "suppliers": list(context.config.suppliers)})


@router.get("/plant/health")
async def health(request: Request, session: Current) -> HTMLResponse:
    visible_plant(session, request)
    context = board_of(request).context
    found = await context.run(edge_health, context.store, context.config)
    return page(request, "health.html", {"health": found})


def visible_plant(session: Session, request: Request) -> None:
    """The plant's fragments are the coordinator's only (404 for a supplier's session)."""
    if not session.plant:
        visible(session, "", request)
