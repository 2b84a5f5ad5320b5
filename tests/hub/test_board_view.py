"""The board's rows from API order objects: cells, progress, the derived estimate and risk,
and the API's own risk and estimate when the order carries them."""

from __future__ import annotations

from typing import Any

from hub.board.view import row_of
from sync.packet import format_time

NOW = 1_800_000_000.0


def order(due: float | None, state: str = "Running", good: int = 50, planned: int = 100,
          **extra: Any) -> dict[str, Any]:
    op = {"operation": "OP10", "state": state, "station": "Press 1", "lastEventId": "x",
          "quantities": {"good": good, "scrap": 2, "planned": planned},
          "startedAt": format_time(NOW - 1000), "lastEventTime": format_time(NOW - 500),
          "completedAt": format_time(NOW - 500) if state == "Completed" else None}
    return {"workOrder": "WO-1", "due": format_time(due) if due else None,
            "closed": state == "Completed", "operations": [op], **extra}


def test_cells_progress_and_the_average_rate_estimate() -> None:
    row = row_of(order(NOW + 10_000), [], {}, NOW)
    cell = row.cells["OP10"]
    assert (cell.percent, cell.good, cell.scrap, row.scrap) == (50, 50, 2, 2)
    # 50 parts in 500 s: the other 50 take 500 s more.
    assert row.eta == NOW and row.risk == "on_track"


def test_derived_risk() -> None:
    assert row_of(order(NOW - 500 + 100), [], {}, NOW).risk == "late"
    assert row_of(order(NOW - 100), [], {}, NOW - 200).risk == "at_risk"  # estimate after due
    assert row_of(order(None), [], {}, NOW).risk == "unknown"
    assert row_of(order(NOW - 600, state="Completed", good=100), [], {}, NOW).risk == "missed"
    assert row_of(order(NOW, state="Completed", good=100), [], {}, NOW).risk == "on_track"
    assert row_of(order(NOW + 10_000, good=0), [], {}, NOW).eta is None  # no progress yet


def test_the_apis_own_risk_and_estimate_win() -> None:
    row = row_of(order(NOW + 10_000, risk="at_risk",
                       estimatedCompletion=format_time(NOW + 20_000)), [], {}, NOW)
    assert row.risk == "at_risk" and row.eta == NOW + 20_000
