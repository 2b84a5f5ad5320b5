"""The board's rows: the API's order objects turned into what a page draws (cells, progress,
estimate, risk), and the open alerts.

Risk and estimate are derived here from what the API returns today; an order object that
carries the orders contract's `risk` and `estimatedCompletion` (issue #14) is shown with
those instead, so `risk_of` and `estimate_of` go once the API gives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hub.badrows import printable_time
from sync.packet import parse_time


def _time(text: str | None) -> float | None:
    return parse_time(text) if text else None


@dataclass(slots=True)
class Cell:
    """One operation of one order."""

    operation: str
    state: str
    good: int
    scrap: int
    planned: int | None
    station: str
    reason: str | None = None
    last_event_id: str = ""

    @property
    def percent(self) -> int | None:
        if not self.planned:
            return None
        return max(0, min(100, round(100 * self.good / self.planned)))


@dataclass(slots=True)
class Row:
    """One order as a row of the board."""

    work_order: str
    due: float | None
    closed: bool
    cells: dict[str, Cell]
    eta: float | None = None
    risk: str = "unknown"
    alerts: int = 0

    @property
    def good(self) -> int:
        return sum(c.good for c in self.cells.values())

    @property
    def scrap(self) -> int:
        return sum(c.scrap for c in self.cells.values())


@dataclass(slots=True)
class Alert:
    work_order: str
    operation: str
    kind: str
    text: str
    time: float
    severity: str = "warning"
    estimate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_alerts(packets: list[tuple[int, dict[str, Any]]]) -> list[Alert]:
    """The alerts still raised: the latest packet of each (order, operation, kind) whose alarm
    is active, newest first."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for _, packet in packets:
        data = packet.get("data") or {}
        key = ((data.get("workOrder") or {}).get("id", ""),
               (data.get("operation") or {}).get("id", ""),
               str(packet.get("type", "")).removeprefix("keyop.alert."))
        latest[key] = packet
    found = []
    for (work_order, operation, kind), packet in latest.items():
        alarm = (packet.get("data") or {}).get("alarm") or {}
        if not alarm.get("active"):
            continue
        completion = ((packet.get("data") or {}).get("estimate") or {}).get("completion")
        found.append(Alert(work_order, operation, kind, str(alarm.get("text") or ""),
                           _time(packet.get("time")) or 0.0,
                           str(alarm.get("severity") or "warning"),
                           _time(completion) if isinstance(completion, str) else None))
    return sorted(found, key=lambda a: a.time, reverse=True)


def estimate_of(cells: list[Cell], operations: list[dict[str, Any]]) -> float | None:
    """When the order completes if each open operation keeps its average rate since it
    started; None when one cannot finish (no progress yet, or no planned quantity). A
    straight division, not the alerts' least-squares fit: a board draws thousands of cells."""
    ends: list[float] = []
    for cell, op in zip(cells, operations, strict=True):
        if cell.state in ("Completed", "Aborted"):
            done = _time(op.get("completedAt")) or _time(op.get("lastEventTime"))
            if done is not None:
                ends.append(done)
            continue
        started, last = _time(op.get("startedAt")), _time(op.get("lastEventTime"))
        if started is None or last is None or cell.planned is None:
            return None
        remaining = max(cell.planned - cell.good, 0)
        if remaining and (cell.good <= 0 or last <= started):
            return None
        end = last + remaining * (last - started) / cell.good if remaining else last
        if not printable_time(end):
            return None
        ends.append(end)
    return max(ends) if ends else None


def risk_of(row: Row, completed: float | None, raised: bool, now: float) -> str:
    """on_track, at_risk, late, missed or unknown (no due time)."""
    if row.due is None:
        return "unknown"
    if row.closed:
        return "missed" if completed is not None and completed > row.due else "on_track"
    if now > row.due:
        return "late"
    if raised or (row.eta is not None and row.eta > row.due):
        return "at_risk"
    return "on_track"


def row_of(order: dict[str, Any], alerts: list[Alert], events: dict[str, Any],
           now: float | None = None) -> Row:
    """A board row from one API order object; `events` are the redacted last events by id
    (for a paused operation's reason)."""
    operations = order.get("operations") or []
    cells = []
    for op in operations:
        q = op.get("quantities") or {}
        cell = Cell(op["operation"], op["state"], int(q.get("good", 0)), int(q.get("scrap", 0)),
                    q.get("planned"), str(op.get("station", "")),
                    last_event_id=str(op.get("lastEventId", "")))
        if cell.state == "Paused":
            reason = (((events.get(cell.last_event_id) or {}).get("data") or {})
                      .get("state") or {}).get("reason") or {}
            cell.reason = reason.get("text") or reason.get("code")
        cells.append(cell)
    row = Row(order["workOrder"], _time(order.get("due")), bool(order.get("closed")),
              {c.operation: c for c in cells})
    mine = [a for a in alerts if a.work_order == row.work_order]
    row.alerts = len(mine)
    if "risk" in order:
        # The API's own estimate and risk (the orders contract): shown as it gives them.
        row.eta, row.risk = _time(order.get("estimatedCompletion")), str(order["risk"])
        return row
    row.eta = estimate_of(cells, operations)
    completed = row.eta if row.closed else None
    row.risk = risk_of(row, completed, any(a.kind == "delay_risk" for a in mine),
                       time.time() if now is None else now)
    return row


def columns(rows: list[Row], key_operations: list[str] | None) -> list[str]:
    """The operation columns: hub.yaml's key operations, else every operation seen, sorted."""
    if key_operations:
        return list(key_operations)
    return sorted({op for row in rows for op in row.cells})


def paused_ids(orders: list[dict[str, Any]]) -> list[str]:
    """The last event ids of paused operations (whose reason the board shows)."""
    return [str(op.get("lastEventId")) for order in orders
            for op in order.get("operations") or [] if op.get("state") == "Paused"]
