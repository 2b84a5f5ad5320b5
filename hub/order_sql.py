"""The read queries behind the orders a supplier sees (hub/orders.py) and the hub's status:
assignments with their times, an order's timeline events, the newest stored packet.

Plain functions over a Store's engine (the API's own pool when called from the API), kept
apart from hub/store.py, which is the ingest and fan-out path.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

from hub.schema import assignments, packets
from hub.store import Store

# The operation events that change whether an operation runs: what a timeline shows.
TIMELINE_TYPES = ("keyop.operation.started", "keyop.operation.paused",
                  "keyop.operation.resumed", "keyop.operation.completed",
                  "keyop.operation.aborted")


class AssignmentRow(NamedTuple):
    work_order: str
    supplier: str
    due: float | None
    updated_at: float


class TimelineRow(NamedTuple):
    pk: int
    type: str
    operation: str | None
    event_time: float
    id: str
    body: str


class Newest(NamedTuple):
    """The newest stored packet's hub receive time and event time."""

    received_at: float
    event_time: float


def assignments_of(store: Store, supplier: str) -> list[AssignmentRow]:
    """The API assignments of one supplier, by work order."""
    t = assignments.c
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.work_order, t.supplier, t.due, t.updated_at)
                            .where(t.supplier == supplier).order_by(t.work_order)).all()
    return [AssignmentRow(r.work_order, r.supplier, r.due, float(r.updated_at)) for r in rows]


def timeline_rows(store: Store, work_order: str, limit: int) -> list[TimelineRow]:
    """Up to `limit` of a work order's run-changing operation events, by event time (the
    hub's log order breaks a tie)."""
    t = packets.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.pk, t.type, t.operation, t.event_time, t.id, t.body)
            .where(t.work_order == work_order, t.type.in_(TIMELINE_TYPES))
            .order_by(t.event_time, t.pk).limit(limit)).all()
    return [TimelineRow(int(r.pk), r.type, r.operation, float(r.event_time), r.id, r.body)
            for r in rows]


def newest_packet(store: Store) -> Newest | None:
    """The hub's newest stored packet (highest log position); None while there is none."""
    t = packets.c
    with store.engine.connect() as conn:
        head = sa.select(sa.func.max(t.pk)).scalar_subquery()
        row = conn.execute(sa.select(t.received_at, t.event_time).where(t.pk == head)).first()
    return None if row is None else Newest(float(row.received_at), float(row.event_time))
