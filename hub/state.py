"""Operation state that does not depend on arrival order (docs/architecture.md, guarantee 7).

Of two operation events, the newer is decided by `(sourceepoch, sequence)` when both come from
the same source (epochs are ULIDs, so they sort by creation) and by event time across sources
(the source breaks a tie). The database applies the same rule in its upsert, so two hub workers
that store the same events in any order, in any interleaving, end with the same row.
`started_at` is the earliest `started` event and `completed_at` the latest `completed` one,
whichever arrives last.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import pydantic_core
import sqlalchemy as sa

from hub.badrows import printable_time
from hub.schema import op_state
from sync.packet import Packet, parse_time

CLOSED_STATES = frozenset({"Completed", "Aborted"})


class StateRow(NamedTuple):
    """One candidate `op_state` row, from one stored operation event (a NamedTuple: the
    ingest path turns thousands a second into parameter dicts)."""

    work_order: str
    operation: str
    state: str
    type: str
    good: int
    scrap: int
    rework: int
    planned: int | None
    uom: str
    station: str
    customer_orders: str
    started_at: float | None
    completed_at: float | None
    last_time: float
    last_source: str
    last_epoch: str
    last_seq: int
    last_pk: int
    last_id: str
    received_at: float

    @staticmethod
    def of(packet: Packet, pk: int, received_at: float, at: float | None = None
           ) -> StateRow | None:
        """The row an operation event proposes (`at`: its event time, when not the packet's
        own); None for other events."""
        data = packet.data
        if (not packet.type.startswith("keyop.operation.") or data.workOrder is None
                or data.operation is None or data.state is None or data.quantities is None
                or data.equipment is None):
            return None
        q = data.quantities
        if at is None:
            at = parse_time(packet.time)
        return StateRow(
            work_order=data.workOrder.id,
            operation=data.operation.id,
            state=data.state.value,
            type=packet.type,
            good=q.good,
            scrap=q.scrap,
            rework=q.rework,
            planned=q.planned,
            uom=q.uom,
            station=data.equipment.path,
            customer_orders=pydantic_core.to_json(data.workOrder.customerOrders or []).decode(),
            started_at=at if packet.type == "keyop.operation.started" else None,
            completed_at=at if packet.type == "keyop.operation.completed" else None,
            last_time=at,
            last_source=packet.source,
            last_epoch=packet.sourceepoch,
            last_seq=packet.seq,
            last_pk=pk,
            last_id=packet.id,
            received_at=received_at,
        )


def state_rows(items: Iterable[tuple[Packet, int, float | None]], received_at: float
               ) -> list[StateRow]:
    """The reduced `op_state` rows of a batch of stored packets `(packet, pk, event time)`
    (the event time None: the packet's own).

    The newest packet per operation is chosen on its identity first; only the winners are
    turned into rows (the ingest path sees thousands of packets a second).
    """
    best: dict[tuple[str, str], tuple[Packet, int, float]] = {}
    started: dict[tuple[str, str], float] = {}
    completed: dict[tuple[str, str], float] = {}
    for packet, pk, when in items:
        data = packet.data
        if (not packet.type.startswith("keyop.operation.") or data.workOrder is None
                or data.operation is None):
            continue
        key = (data.workOrder.id, data.operation.id)
        at = parse_time(packet.time) if when is None else when
        if packet.type == "keyop.operation.started":
            started[key] = min(at, started.get(key, at))
        elif packet.type == "keyop.operation.completed":
            completed[key] = max(at, completed.get(key, at))
        old = best.get(key)
        if old is None or _newer_packet(packet, at, old[0], old[2]):
            best[key] = (packet, pk, at)
    rows = []
    for key in sorted(best):
        packet, pk, at = best[key]
        row = StateRow.of(packet, pk, received_at, at)
        if row is not None:
            rows.append(row._replace(started_at=started.get(key), completed_at=completed.get(key)))
    return rows


def _newer_packet(a: Packet, a_time: float, b: Packet, b_time: float) -> bool:
    if a.source == b.source:
        return (a.sourceepoch, a.seq) > (b.sourceepoch, b.seq)
    return (a_time, a.source) > (b_time, b.source)


_NEWEST_FIELDS = ("state", "type", "good", "scrap", "rework", "planned", "uom", "station",
                  "customer_orders", "last_time", "last_source", "last_epoch", "last_seq",
                  "last_pk", "last_id")


def upsert_statement(stmt: Any) -> Any:
    """`stmt` (an INSERT into `op_state`, of values or from a SELECT) made an upsert that
    applies the rule of the module docstring on conflict."""
    t = op_state.c
    ex = stmt.excluded
    is_newer = sa.or_(
        sa.and_(ex.last_source == t.last_source,
                sa.or_(ex.last_epoch > t.last_epoch,
                       sa.and_(ex.last_epoch == t.last_epoch, ex.last_seq > t.last_seq))),
        sa.and_(ex.last_source != t.last_source,
                sa.or_(ex.last_time > t.last_time,
                       sa.and_(ex.last_time == t.last_time, ex.last_source > t.last_source))),
    )
    set_: dict[str, Any] = {
        name: sa.case((is_newer, ex[name]), else_=t[name]) for name in _NEWEST_FIELDS
    }
    set_["started_at"] = sa.case(
        (t.started_at.is_(None), ex.started_at),
        (sa.and_(ex.started_at.is_not(None), ex.started_at < t.started_at), ex.started_at),
        else_=t.started_at,
    )
    set_["completed_at"] = sa.case(
        (t.completed_at.is_(None), ex.completed_at),
        (sa.and_(ex.completed_at.is_not(None), ex.completed_at > t.completed_at),
         ex.completed_at),
        else_=t.completed_at,
    )
    set_["received_at"] = sa.case((ex.received_at > t.received_at, ex.received_at),
                                  else_=t.received_at)
    return stmt.on_conflict_do_update(index_elements=[t.work_order, t.operation], set_=set_)


def state_document(row: Any) -> dict[str, Any]:
    """The public view of an `op_state` row (API and retained MQTT state), station unmapped."""
    quantities: dict[str, Any] = {
        "uom": row.uom, "produced": row.good + row.scrap + row.rework,
        "good": row.good, "scrap": row.scrap, "rework": row.rework,
    }
    if row.planned is not None:
        quantities["planned"] = row.planned
    return {
        "workOrder": row.work_order,
        "operation": row.operation,
        "state": row.state,
        "type": row.type,
        "quantities": quantities,
        "station": row.station,
        "startedAt": _iso(row.started_at),
        "completedAt": _iso(row.completed_at),
        "lastEventTime": _iso(row.last_time),
        "lastEventId": row.last_id,
        "closed": row.state in CLOSED_STATES,
    }


def _iso(value: float | None) -> str | None:
    """RFC 3339 of a stored time; None for none, or for one no RFC 3339 text can hold (a row
    not written by this hub: hub/badrows.py)."""
    from sync.packet import format_time

    return format_time(value) if printable_time(value) else None
