"""What the board reads: the supplier API's answers, through the API's own functions, so a
board shows exactly what that supplier's API returns.

Orders come from `context.orders` (hub/orders.py), the functions behind GET /v1/orders and
GET /v1/orders/{order}: the same redaction, risk, estimate and timeline. The events behind a
cell or a timeline entry (a pause's reason) and the alerts are the supplier's own redacted
copies as its feed carries them (hub/feed.py).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from hub.api.context import ApiContext
from hub.badrows import BAD_ROW
from hub.orders import OrderFilter
from hub.schema import alerts as alert_rows
from hub.schema import feed

EVERY = OrderFilter()


def orders(context: ApiContext, supplier: str) -> list[dict[str, Any]]:
    """Every order of GET /v1/orders, all pages."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page, cursor = context.orders.page(supplier, EVERY, cursor,
                                           context.config.api.max_limit)
        found += page
        if cursor is None:
            return found


def orders_named(context: ApiContext, supplier: str, names: list[str]) -> list[dict[str, Any]]:
    """The order of GET /v1/orders/{order} (without its timeline) of each name the supplier
    may see; others are left out, as the API answers 404 for them."""
    wanted = {name: (supplier,) for name in dict.fromkeys(names)}
    found = context.orders.documents(wanted)
    return [found[(supplier, name)] for name in wanted if (supplier, name) in found]


def order(context: ApiContext, supplier: str, work_order: str) -> dict[str, Any] | None:
    """GET /v1/orders/{order}: one order with its timeline; None for a 404."""
    return context.orders.one(supplier, work_order)


def alerts(context: ApiContext, supplier: str) -> list[dict[str, Any]]:
    """The supplier's latest alert event of each (order, operation, kind), as its feed
    carries it (less the feed's `sequence`): read from the alerts' status history
    (hub/store_alerts.py), one row per key, rather than the feed's whole alert history."""
    a = alert_rows.c
    latest = (sa.select(sa.func.max(a.pk)).where(a.supplier == supplier)
              .group_by(a.work_order, a.operation, a.kind).scalar_subquery())
    with context.store.reader.connect() as conn:
        bodies = conn.execute(sa.select(a.body).where(a.pk.in_(latest))
                              .order_by(a.pk)).scalars().all()
    found = []
    for body in bodies:
        try:
            found.append(json.loads(body))
        except BAD_ROW:
            continue  # a row no alert evaluation could have written (hub/badrows.py)
    return found


def feed_events(context: ApiContext, supplier: str, work_orders: list[str], ids: list[str]
                ) -> dict[str, Any]:
    """The supplier's feed copies of these events (cells' `lastEventId`, timeline ids) of
    these orders, by id."""
    if not ids or not work_orders:
        return {}
    c = feed.c
    with context.store.reader.connect() as conn:
        bodies = conn.execute(sa.select(c.body).where(
            c.supplier == supplier, c.work_order.in_(sorted(set(work_orders))),
            c.event_id.in_(sorted(set(ids))))).scalars().all()
    found: dict[str, Any] = {}
    for body in bodies:
        try:
            event = json.loads(body)
            found[str(event["id"])] = event
        except BAD_ROW:
            continue
    return found
