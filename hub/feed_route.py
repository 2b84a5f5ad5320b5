"""What goes into each supplier's feed, decided once, in the writer's transaction.

- A stored packet goes to the suppliers its hub.yaml routes name and to those its work order
  is assigned to through the API, as each one's redacted copy (hub/routing.py). Assignments
  are read in the ingest transaction, after its packet inserts: an assignment change
  (`assignment_entries`) holds off ingest while it commits (PostgreSQL: a SHARE lock on
  `packets`; SQLite: the write lock), so each event is either in the order's backfill or
  routed by the new assignment, never lost between the two.
- An assignment change is an event of its own (`keyop.assignment.added` / `.removed`); a
  newly assigned order's history follows its `added` event, each event marked as backfill
  (`keyopbackfill: true`), except events the supplier's feed already holds.
- Alerts: one per supplier, made by hub/alerts.py, redacted like any event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub import feed_store, hub_events, routing
from hub.badrows import BAD_ROW, printable_time
from hub.config import HubConfig
from hub.feed_store import Append
from hub.schema import assignments, packets

if TYPE_CHECKING:
    from hub.store_ingest import Incoming

ADDED = "keyop.assignment.added"
REMOVED = "keyop.assignment.removed"
# Work orders looked up at once (bound parameters per statement).
_CHUNK = 500


class FeedRouting:
    """hub.yaml routes compiled once; assignments read where they are needed."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.router = routing.Router(config)
        self._rank = {name: i for i, name in enumerate(config.suppliers)}

    def entries(self, conn: Connection, inserted: Sequence[tuple[int, Incoming]]
                ) -> list[Append]:
        """The feed entries of packets just inserted, `(pk, item)` in pk order."""
        orders = sorted({wo for _, item in inserted if (wo := _work_order(item.raw))})
        assigned = assigned_suppliers(conn, orders)
        out: list[Append] = []
        suppliers = self.config.suppliers
        for pk, item in inserted:
            raw = item.raw
            work_order = _work_order(raw)
            names = set(self.router.suppliers_for(raw))
            if work_order is not None:
                names |= assigned.get(work_order, set())
            packet = item.packet
            operation = packet.data.operation.id if packet.data.operation else None
            for supplier in sorted(names, key=lambda n: self._rank.get(n, len(self._rank))):
                rules = suppliers.get(supplier)
                if rules is not None:
                    out.append(Append(supplier, packet.id, packet.type,
                                      body=routing.redact(raw, rules), work_order=work_order,
                                      operation=operation, packet_pk=pk))
        return out

    def assignment_entries(self, conn: Connection, work_order: str,
                           before: Mapping[str, float | None], after: Iterable[str],
                           due: float | None, now: float) -> list[Append]:
        """The feed entries of an assignment change: `removed` for suppliers no longer
        assigned, `added` (with the due time) for new ones followed by the order's history,
        and `added` again for suppliers whose due time changed."""
        wanted = [s for s in sorted(set(after)) if s in self.config.suppliers]
        gone = [s for s in sorted(before) if s not in wanted and s in self.config.suppliers]
        offset = hub_events.plant_offset(conn, self.config.hub.tz_offset, work_order)
        out = [self._assignment(REMOVED, s, work_order, before[s], now, offset) for s in gone]
        history: list[Any] | None = None
        for supplier in wanted:
            if supplier in before and before[supplier] == due:
                continue
            out.append(self._assignment(ADDED, supplier, work_order, due, now, offset))
            if supplier in before:
                continue  # only the due time changed: the history is there already
            if history is None:
                history = list(conn.execute(
                    sa.select(packets.c.pk, packets.c.id, packets.c.type, packets.c.operation,
                              packets.c.body)
                    .where(packets.c.work_order == work_order).order_by(packets.c.pk)).all())
            out.extend(self._backfill(conn, supplier, work_order, history))
        return out

    def _backfill(self, conn: Connection, supplier: str, work_order: str,
                  history: list[Any]) -> list[Append]:
        held = feed_store.event_ids(conn, supplier, work_order)
        rules = self.config.suppliers[supplier]
        out: list[Append] = []
        for row in history:
            if row.id in held:
                continue
            try:
                event = pydantic_core.from_json(row.body)
                body = feed_store.backfilled(routing.redact(event, rules))
            except BAD_ROW:
                continue  # a row no packet could have left (hub/badrows.py)
            out.append(Append(supplier, row.id, row.type, body=body, work_order=work_order,
                              operation=row.operation, packet_pk=int(row.pk)))
        return out

    def _assignment(self, type_: str, supplier: str, work_order: str, due: float | None,
                    now: float, offset: str) -> Append:
        shown = hub_events.at_offset(due, offset) if printable_time(due) else None
        data = {"workOrder": {"id": work_order}, "assignment": {"due": shown}}
        event = hub_events.hub_event(self.config.hub.id, type_, work_order, now, offset, data)
        return self.hub_append(supplier, event, work_order, None)

    def hub_append(self, supplier: str, event: dict[str, Any], work_order: str | None,
                   operation: str | None) -> Append:
        """A hub event for one supplier: redacted like any event once its sequence is set."""
        rules = self.config.suppliers[supplier]
        return Append(supplier, event["id"], event["type"], work_order=work_order,
                      operation=operation, render=lambda seq: routing.redact(
                          hub_events.with_sequence(event, seq), rules))


def assigned_suppliers(conn: Connection, orders: Sequence[str]) -> dict[str, set[str]]:
    """The API's assignments of some work orders, read in `conn`'s transaction."""
    found: dict[str, set[str]] = {}
    for i in range(0, len(orders), _CHUNK):
        for work_order, supplier in conn.execute(
                sa.select(assignments.c.work_order, assignments.c.supplier)
                .where(assignments.c.work_order.in_(orders[i:i + _CHUNK]))):
            found.setdefault(work_order, set()).add(supplier)
    return found


def _work_order(raw: dict[str, Any]) -> str | None:
    data = raw.get("data")
    work_order = data.get("workOrder") if isinstance(data, dict) else None
    found = work_order.get("id") if isinstance(work_order, dict) else None
    return found if isinstance(found, str) else None
