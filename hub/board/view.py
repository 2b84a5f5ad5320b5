"""The board's rows: the API's order objects turned into what a page draws (cells, progress,
the API's own estimate and risk), and the open alerts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def open_alerts(packets: list[dict[str, Any]]) -> list[Alert]:
    """The alerts still raised: the latest packet of each (order, operation, kind) whose alarm
    is active, newest first."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for packet in packets:
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


def row_of(order: dict[str, Any], alerts: list[Alert], events: dict[str, Any]) -> Row:
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
    # The API's own estimate and risk (hub/orders.py), shown as it gives them.
    return Row(order["workOrder"], _time(order.get("due")), bool(order.get("closed")),
               {c.operation: c for c in cells}, eta=_time(order.get("estimatedCompletion")),
               risk=str(order.get("risk") or "unknown"),
               alerts=sum(a.work_order == order["workOrder"] for a in alerts))


def columns(rows: list[Row], key_operations: list[str] | None) -> list[str]:
    """The operation columns: hub.yaml's key operations, else every operation seen, sorted."""
    if key_operations:
        return list(key_operations)
    return sorted({op for row in rows for op in row.cells})


def paused_ids(orders: list[dict[str, Any]]) -> list[str]:
    """The last event ids of paused operations (whose reason the board shows)."""
    return [str(op.get("lastEventId")) for order in orders
            for op in order.get("operations") or [] if op.get("state") == "Paused"]
