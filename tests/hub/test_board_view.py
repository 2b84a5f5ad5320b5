"""The board's rows from API order objects: cells, progress, a pause's reason, and the API's
own risk and estimate shown as it gives them."""

from __future__ import annotations

from typing import Any

from hub.board.view import open_alerts, row_of
from sync.packet import format_time

NOW = 1_800_000_000.0


def order(state: str = "Running", good: int = 50, planned: int | None = 100,
          **extra: Any) -> dict[str, Any]:
    op = {"operation": "OP10", "state": state, "station": "Press 1", "lastEventId": "E1",
          "quantities": {"good": good, "scrap": 2, "planned": planned}}
    return {"workOrder": "WO-1", "due": format_time(NOW), "closed": state == "Completed",
            "operations": [op], **extra}


def test_cells_and_progress() -> None:
    row = row_of(order(risk="on_track", estimatedCompletion=None), [], {})
    cell = row.cells["OP10"]
    assert (cell.percent, cell.good, cell.scrap, row.scrap, row.due) == (50, 50, 2, 2, NOW)
    assert row_of(order(planned=None, risk="unknown"), [], {}).cells["OP10"].percent is None


def test_the_apis_risk_and_estimate_are_shown_as_given() -> None:
    row = row_of(order(risk="at_risk", estimatedCompletion=format_time(NOW + 20_000)), [], {})
    assert row.risk == "at_risk" and row.eta == NOW + 20_000
    # No derivation of its own: an order without them is unknown, with no estimate.
    bare = row_of(order(), [], {})
    assert bare.risk == "unknown" and bare.eta is None


def test_a_paused_cell_shows_its_events_reason() -> None:
    events = {"E1": {"data": {"state": {"reason": {"code": "material",
                                                    "text": "waiting for steel"}}}}}
    row = row_of(order(state="Paused", risk="on_track"), [], events)
    assert row.cells["OP10"].reason == "waiting for steel"


def test_open_alerts_keep_the_latest_of_each_and_count_per_row() -> None:
    def alert(active: bool, at: float) -> dict[str, Any]:
        return {"type": "keyop.alert.delay_risk", "time": format_time(at),
                "data": {"workOrder": {"id": "WO-1"}, "operation": {"id": "OP10"},
                         "alarm": {"active": active, "text": "late soon"}}}

    assert open_alerts([alert(True, NOW), alert(False, NOW + 1)]) == []
    found = open_alerts([alert(False, NOW), alert(True, NOW + 1)])
    assert [(a.work_order, a.kind, a.text) for a in found] == [("WO-1", "delay_risk", "late soon")]
    assert row_of(order(risk="at_risk"), found, {}).alerts == 1
