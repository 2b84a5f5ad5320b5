"""Work orders as a supplier sees them: `GET /v1/orders`, `GET /v1/orders/{order}` and the
retained order state on MQTT (`keyop/v1/sup/{supplier}/state/{workOrder}`), one object for
all three (docs/api.md, "Orders").

An order concerns a supplier when one of its operations does (routed like its newest event),
or when it is assigned to the supplier through the API, or named by the supplier's hub.yaml
routes by work order alone: then it is listed before its first event, with its due time and
no operations. Estimates and delay risk follow hub/risk.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hub import routing
from hub.badrows import BAD_ROW, printable_time
from hub.config import HubConfig
from hub.order_sql import assignments_of, timeline_rows
from hub.risk import Assessment, assess_operation, assess_order, estimate
from hub.state import CLOSED_STATES
from hub.store import Store
from sync.packet import format_time

# Operation rows looked at, at most, for one page (a page may end early: `next` goes on).
SCAN_ROWS = 5_000
# Timeline events read for one order, at most.
TIMELINE_EVENTS = 10_000
_WILD = frozenset("*?[")
_RUN_STARTS = frozenset({"keyop.operation.started", "keyop.operation.resumed"})
# The newest progress points of operations, by (work order, operation), oldest first.
Points = Mapping[tuple[str, str], list[tuple[float, int]]]


class Scope(Protocol):
    """What the order views read: the API's context (hub/api/context.py) is one."""

    config: HubConfig
    store: Store

    def router(self) -> routing.Router: ...

    def due(self, work_order: str) -> float | None: ...

    def visible_state(self, supplier: str, row: Any) -> bool: ...

    def state_for(self, supplier: str, row: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which orders a page lists: open or closed ones (None: both), changed at or after
    `updated_since` (hub time), with one of `risks` (empty: any)."""

    closed: bool | None = None
    updated_since: float | None = None
    risks: frozenset[str] = frozenset()

    def accepts(self, order: Mapping[str, Any], updated: float | None) -> bool:
        if self.closed is not None and order["closed"] != self.closed:
            return False
        if self.updated_since is not None and (updated is None
                                               or updated < self.updated_since):
            return False
        return not self.risks or order["risk"] in self.risks


def iso(value: float | None) -> str | None:
    """RFC 3339 of a time; None for none, or one no RFC 3339 text can hold."""
    return format_time(value) if printable_time(value) else None


class Orders:
    """The order views over one scope. Thread-safe; every call reads the database."""

    def __init__(self, scope: Scope, clock: Callable[[], float] = time.time) -> None:
        self.scope = scope
        self.clock = clock

    def page(self, supplier: str, wanted: OrderFilter, after: str | None, limit: int
             ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` orders after work order `after`, by work order id, and the cursor of
        the next page (None at the end). Once it has looked at SCAN_ROWS operation rows and
        holds an order, it answers: a page may be short and still have a `next`."""
        known = self._known(supplier)
        pending = sorted(w for w in known if after is None or w > after)
        found: list[dict[str, Any]] = []
        cursor, scanned, now = after, 0, self.clock()
        while True:
            rows = self.scope.store.list_states(cursor, 500)
            full = len(rows) == 500
            if full and rows[0].work_order != rows[-1].work_order:
                # Never split a work order between two reads.
                rows = [r for r in rows if r.work_order != rows[-1].work_order]
            grouped: dict[str, list[Any]] = {}
            for row in rows:
                grouped.setdefault(row.work_order, []).append(row)
            end = rows[-1].work_order if full else None  # None: no state rows after these
            ids = sorted(set(grouped) | {w for w in pending if end is None or w <= end})
            pending = [w for w in pending if end is not None and w > end]
            shown = {w: self._visible(supplier, found) for w, found in grouped.items()}
            points = self._points(shown.values())
            for work_order in ids:
                scanned += len(grouped.get(work_order, ())) or 1
                built = self._order(supplier, work_order, shown.get(work_order, []),
                                    known, now, points)
                if built is not None and wanted.accepts(*built):
                    found.append(built[0])
                    if len(found) == limit:
                        return found, work_order
            if end is None:
                return found, None
            cursor = end
            if scanned >= SCAN_ROWS and found:
                # A short page's cursor is the last order it holds: `end` may be another
                # supplier's work order, and a cursor must never name one.
                return found, str(found[-1]["workOrder"])

    def one(self, supplier: str, work_order: str) -> dict[str, Any] | None:
        """One order with its timeline; None when it does not concern the supplier."""
        rows = self.scope.store.list_states(None, 10_000, work_order=work_order)
        visible = self._visible(supplier, rows)
        built = self._order(supplier, work_order, visible, self._known(supplier),
                            self.clock(), self._points([visible]))
        if built is None:
            return None
        order = built[0]
        shown = {op["operation"] for op in order["operations"]}
        order["timeline"] = self.timeline(supplier, work_order, shown)
        return order

    def documents(self, wanted: Mapping[str, Iterable[str]]
                  ) -> dict[tuple[str, str], dict[str, Any]]:
        """The order objects of `{work order: suppliers}` (the retained order state), keyed
        by (supplier, work order); an order that no longer concerns a supplier is left out."""
        now = self.clock()
        known: dict[str, dict[str, float | None]] = {}
        shown: dict[tuple[str, str], list[Any]] = {}
        for work_order, suppliers in wanted.items():
            rows = self.scope.store.list_states(None, 10_000, work_order=work_order)
            for supplier in suppliers:
                if supplier not in known:
                    known[supplier] = self._known(supplier)
                shown[(supplier, work_order)] = self._visible(supplier, rows)
        points = self._points(shown.values())
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for (supplier, work_order), visible in shown.items():
            built = self._order(supplier, work_order, visible, known[supplier], now, points)
            if built is not None:
                found[(supplier, work_order)] = built[0]
        return found

    def timeline(self, supplier: str, work_order: str, operations: set[str]
                 ) -> list[dict[str, Any]]:
        """Per operation the supplier sees: its run-changing events in time order and the
        intervals it ran (an interval still running has no `end`)."""
        router = self.scope.router()
        events: dict[str, list[dict[str, Any]]] = {}
        for row in timeline_rows(self.scope.store, work_order, TIMELINE_EVENTS):
            if row.operation not in operations or not printable_time(row.event_time):
                continue
            try:
                event = json.loads(row.body)
                if not router.concerns(supplier, event):
                    continue
            except BAD_ROW:
                continue  # a row no packet could have left (hub/badrows.py)
            events.setdefault(row.operation, []).append(
                {"type": row.type, "time": format_time(row.event_time), "id": row.id})
        return [{"operation": op, "events": found, "running": _running(found)}
                for op, found in sorted(events.items())]

    # -- one order ---------------------------------------------------------------------------

    def _known(self, supplier: str) -> dict[str, float | None]:
        """Orders that concern the supplier before any event: API assignments (with the time
        of the assignment) and work orders hub.yaml names, each routed to it by id alone."""
        config = self.scope.config
        names: dict[str, float | None] = {w: None for w in config.orders}
        for route in config.routes:
            if route.supplier == supplier:
                names.update({w: None for w in route.work_orders or ()
                              if not (_WILD & set(w))})
        for row in assignments_of(self.scope.store, supplier):
            names[row.work_order] = row.updated_at
        router = self.scope.router()
        return {w: at for w, at in names.items()
                if router.concerns(supplier, {"data": {"workOrder": {"id": w}}})}

    def _visible(self, supplier: str, rows: list[Any]) -> list[Any]:
        """The `op_state` rows that concern the supplier."""
        return [r for r in rows if self.scope.visible_state(supplier, r)]

    def _points(self, shown: Iterable[list[Any]]) -> Points:
        """The progress points of every open, planned operation among `shown` (`op_state`
        rows), in one read per hub/store_reads.py POINTS_CHUNK orders rather than one per
        operation: a page of 500 orders of 10 operations is one read, not 5,000."""
        wanted = {row.work_order for rows in shown for row in rows
                  if row.state not in CLOSED_STATES and row.planned is not None}
        if not wanted:
            return {}
        return self.scope.store.progress_points_of(wanted, self.scope.config.alerts.window)

    def _order(self, supplier: str, work_order: str, visible: list[Any],
               known: Mapping[str, float | None], now: float, points: Points
               ) -> tuple[dict[str, Any], float | None] | None:
        """The order object of the supplier's `visible` rows and its last change (hub
        time), or None when it does not concern the supplier."""
        if not visible and work_order not in known:
            return None
        config = self.scope.config
        due = self.scope.due(work_order)
        due = due if printable_time(due) else None
        operations, assessed = [], []
        for row in visible:
            found = self._assess(row, due, now, points)
            document = self.scope.state_for(supplier, row)
            document["estimatedCompletion"] = iso(found.completion)
            document["risk"] = found.risk
            operations.append(document)
            assessed.append(found)
        overall = assess_order(assessed, due, now)
        times = [t for t in [known.get(work_order), *(r.received_at for r in visible)]
                 if printable_time(t)]
        updated = max(times) if times else None
        settings = config.orders.get(work_order)
        plans = [r.planned for r in visible if r.planned is not None]
        planned = settings.planned if settings is not None and settings.planned is not None \
            else (max(plans) if plans else None)
        order = {
            "workOrder": work_order,
            "due": iso(due),
            "planned": planned,
            "closed": bool(visible) and all(r.state in CLOSED_STATES for r in visible),
            "risk": overall.risk,
            "estimatedCompletion": iso(overall.completion),
            "updatedAt": iso(updated),
            "asOf": format_time(now),
            "operations": operations,
        }
        return order, updated

    def _assess(self, row: Any, due: float | None, now: float, points: Points
                ) -> Assessment:
        closed = row.state in CLOSED_STATES
        found = None
        if not closed and row.planned is not None:
            found = estimate(points.get((row.work_order, row.operation), []), row.planned,
                             row.good, due, self.scope.config.alerts.margin_s, False)
        ended = (row.completed_at if row.completed_at is not None else row.last_time) \
            if closed else None
        return assess_operation(closed=closed, ended=ended, found=found, planned=row.planned,
                                due=due, now=now)


def _running(events: list[dict[str, Any]]) -> list[dict[str, str | None]]:
    """The intervals between a start (or resume) and the next pause, completion or abort."""
    intervals: list[dict[str, str | None]] = []
    start: str | None = None
    for event in events:
        if event["type"] in _RUN_STARTS:
            start = start or event["time"]
        elif start is not None:
            intervals.append({"start": start, "end": event["time"]})
            start = None
    if start is not None:
        intervals.append({"start": start, "end": None})
    return intervals

