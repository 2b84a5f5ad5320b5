"""One order's operations on a time axis (the Gantt-like view): running and paused spans
from the timeline of GET /v1/orders/{order}, against the due time and now."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.board.view import Row
from sync.packet import parse_time

WIDTH = 1000  # SVG user units; the picture scales to the page
LANE = 36
LEFT = 110


@dataclass(slots=True)
class Span:
    start: float
    end: float
    kind: str  # "running" | "paused"
    x: float = 0.0
    w: float = 0.0


@dataclass(slots=True)
class Lane:
    operation: str
    y: float
    spans: list[Span] = field(default_factory=list)


@dataclass(slots=True)
class Chart:
    lanes: list[Lane]
    start: float
    end: float
    height: float
    due_x: float | None
    now_x: float
    ticks: list[tuple[float, float]]  # (x, time)
    eta_x: float | None = None
    short: bool = False  # under an hour: ticks show seconds
    due_later: bool = False  # the due time is past the axis' end (marked at the edge)
    left: int = LEFT
    width: int = WIDTH


def _spans(timeline: list[dict[str, Any]], now: float) -> dict[str, list[Span]]:
    """Running and paused spans per operation, from the timeline of GET /v1/orders/{order}
    (each operation's started/paused/resumed/completed/aborted events, in time order)."""
    spans: dict[str, list[Span]] = {}
    for entry in timeline:
        found = spans.setdefault(str(entry["operation"]), [])
        began: tuple[float, str] | None = None
        for event in entry.get("events") or []:
            when = parse_time(event["time"])
            kind = str(event.get("type", "")).rsplit(".", 1)[-1]
            if began is not None:
                found.append(Span(began[0], when, began[1]))
                began = None
            if kind in ("started", "resumed"):
                began = (when, "running")
            elif kind == "paused":
                began = (when, "paused")
        if began is not None:
            found.append(Span(began[0], max(now, began[0]), began[1]))
    return spans


def timeline_events(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The timeline's events of every operation as one list in time order, each with its
    `operation`."""
    found = [{**event, "operation": entry["operation"], "at": parse_time(event["time"])}
             for entry in timeline for event in entry.get("events") or []]
    return sorted(found, key=lambda e: (e["at"], e["operation"]))


def reason_of(event: dict[str, Any] | None) -> str:
    """A pause event's reason text (or code); "" without one."""
    state = ((event or {}).get("data") or {}).get("state") or {}
    reason = state.get("reason") or {} if isinstance(state, dict) else {}
    return str(reason.get("text") or reason.get("code") or "") if isinstance(reason, dict) \
        else ""


def gantt(row: Row, timeline: list[dict[str, Any]], now: float) -> Chart:
    spans = _spans(timeline, now)
    operations = sorted(set(row.cells) | set(spans))
    times = [t for s in spans.values() for span in s for t in (span.start, span.end)]
    start = min(times, default=now)
    end = max([*times, now, *([row.eta] if row.eta else [])])
    if row.due is not None:
        end = max(end, row.due)
    # A due time far beyond the work so far would squash it: the axis then stops at four
    # times the work's span, and the due time is marked at its right edge as later.
    reach = start + 4 * max(max([*times, now]) - start, 300)
    due_later = row.due is not None and row.due > reach
    end = min(max(end, start + 60), reach)
    scale = (WIDTH - LEFT - 10) / (end - start)

    def x(t: float) -> float:
        return round(LEFT + (t - start) * scale, 1)

    lanes = []
    for i, op in enumerate(operations):
        lane = Lane(op, 30 + i * LANE)
        for span in spans.get(op, []):
            span.x, span.w = x(span.start), max(2.0, round((span.end - span.start) * scale, 1))
            lane.spans.append(span)
        lanes.append(lane)
    ticks = [(x(start + (end - start) * k / 4), start + (end - start) * k / 4) for k in range(5)]
    eta = row.eta if row.eta is not None and row.eta <= end else None
    return Chart(lanes, start, end, 40 + len(operations) * LANE,
                 x(min(row.due, end)) if row.due else None, x(now), ticks,
                 x(eta) if eta else None, end - start < 3600, due_later)
