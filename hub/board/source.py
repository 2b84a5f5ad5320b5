"""What the board reads: the supplier API's answers, through the API's own functions and
hub/routing.py's redaction, so a board shows exactly what that supplier's API returns.

This is the one place the board asks for data. Today's API has no risk status, estimate or
timeline per order; until it does (issue #14's orders contract), `timeline` reads the
supplier's own redacted events of the order, and `latest_events` the redacted event behind a
cell (a paused operation's reason). With the contract, `orders` and `orders_named` return
its order objects (view.row_of then shows their `risk` and `estimatedCompletion`); the board
draws 500 orders of 10 operations in one read, so the list must stay a few hundred
milliseconds for the first render to stay under a second.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from hub import routing
from hub.alerts import packet_of
from hub.api.context import ApiContext
from hub.badrows import BAD_ROW
from hub.schema import alerts as alert_rows
from hub.schema import op_state, packets

TIMELINE_TYPES = ("keyop.operation.started", "keyop.operation.paused",
                  "keyop.operation.resumed", "keyop.operation.completed",
                  "keyop.operation.aborted")
# The most events one timeline reads (a long order still renders quickly).
TIMELINE_MAX = 5_000


def orders(context: ApiContext, supplier: str) -> list[dict[str, Any]]:
    """Every order of GET /v1/orders, all pages."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page, cursor = context.orders_of(supplier, cursor, context.config.api.max_limit)
        found += page
        if cursor is None:
            return found


def orders_named(context: ApiContext, supplier: str, names: list[str]) -> list[dict[str, Any]]:
    """GET /v1/orders/{order} of each name the supplier may see (others are left out, as the
    API answers 404 for them): `ApiContext.order` and `summary`, for many orders in one
    read."""
    if not names:
        return []
    with context.store.engine.connect() as conn:
        rows = conn.execute(sa.select(op_state).where(op_state.c.work_order.in_(names))
                            .order_by(op_state.c.work_order, op_state.c.operation)).all()
    by_order: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if context.visible_state(supplier, row):
            by_order.setdefault(row.work_order, []).append(context.state_for(supplier, row))
    return [context.summary(name, by_order[name]) for name in dict.fromkeys(names)
            if name in by_order]


def alerts(context: ApiContext, supplier: str, after: int = 0,
           limit: int = 10_000) -> list[tuple[int, dict[str, Any]]]:
    """GET /v1/alerts: the supplier's alert packets after `after`, with their cursor."""
    rows = context.store.alerts_for(supplier, after, limit)
    found = []
    for row in rows:
        try:
            found.append((int(row.pk), json.loads(packet_of(row.pk, row.body))))
        except BAD_ROW:
            continue
    return found


def _visible(context: ApiContext, supplier: str, bodies: list[str]) -> list[dict[str, Any]]:
    """The supplier's redacted copies of stored packets it is concerned by."""
    router = context.router()
    rules = context.config.suppliers[supplier]
    found = []
    for body in bodies:
        try:
            event = json.loads(body)
            if router.concerns(supplier, event):
                found.append(routing.redacted(event, rules))
        except BAD_ROW:
            continue
    return found


def latest_events(context: ApiContext, supplier: str, ids: list[str]) -> dict[str, Any]:
    """The supplier's redacted events of these ids (cells' `lastEventId`), by id."""
    if not ids:
        return {}
    with context.store.engine.connect() as conn:
        bodies = conn.execute(sa.select(packets.c.body).where(packets.c.id.in_(ids))
                              ).scalars().all()
    return {event["id"]: event for event in _visible(context, supplier, list(bodies))}


def timeline(context: ApiContext, supplier: str, work_order: str) -> list[dict[str, Any]]:
    """The supplier's redacted state changes of one order (started, paused, resumed,
    completed, aborted), in event time."""
    with context.store.engine.connect() as conn:
        bodies = conn.execute(
            sa.select(packets.c.body)
            .where(packets.c.work_order == work_order, packets.c.type.in_(TIMELINE_TYPES))
            .order_by(packets.c.event_time, packets.c.pk).limit(TIMELINE_MAX)).scalars().all()
    return _visible(context, supplier, list(bodies))


def alert_head(context: ApiContext, supplier: str) -> int:
    """The cursor of the supplier's newest alert (0: none)."""
    with context.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(alert_rows.c.pk), 0))
                                .where(alert_rows.c.supplier == supplier)).scalar_one())
