"""Completion estimates and delay risk: one rule for the alerts (hub/alerts.py) and for the
orders a supplier reads (hub/orders.py, `GET /v1/orders`, the retained order state).

An operation's completion is estimated from its progress rate: a least-squares line
through its newest (event time, good) points; no progress at all counts as never finishing.
Its delay-risk status is one of RISKS:

- `missed`: it closed after its order's due time;
- `late`: it is still open and the due time has passed;
- `at_risk`: the estimate passes the due time by more than `alerts.margin_s` (or it does not
  finish at the current rate): what raises a `keyop.alert.delay_risk`;
- `on_track`: it closed in time, or the estimate is within the margin;
- `unknown`: no due time, or no planned quantity to estimate against.

An order's status is its worst operation's (`missed` > `late` > `at_risk` > `on_track` >
`unknown`); an order without operations yet is `late` once its due time passes, else
`unknown`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hub.badrows import printable_time

Risk = Literal["on_track", "at_risk", "late", "missed", "unknown"]
RISKS: tuple[Risk, ...] = ("on_track", "at_risk", "late", "missed", "unknown")
# Worst first: an order takes the first of these that one of its operations has.
_SEVERITY: tuple[Risk, ...] = ("missed", "late", "at_risk", "on_track", "unknown")


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the evaluation found for one operation."""

    rate_per_s: float
    completion: float | None  # None: never at the current rate (or not before year 9999)
    stalled: bool
    delay_risk: bool


def estimate(points: list[tuple[float, int]], planned: int | None, good: int,
             due: float | None, margin_s: float, stalled: bool) -> Estimate:
    """The completion estimate of one operation from its (event time, good) points.

    Points whose time is not a printable time are left out; a rate that is not finite counts
    as no progress; a completion beyond year 9999 (planned 1e18, a rate of 1e-300) as never.
    """
    points = [p for p in points if printable_time(p[0])]
    rate = 0.0
    if len(points) >= 2 and points[-1][0] - points[0][0] > 0:
        rate = _slope(points)
    if not math.isfinite(rate):
        rate = 0.0
    completion: float | None = None
    if planned is not None and points:
        remaining = max(planned - good, 0)
        if remaining == 0:
            completion = points[-1][0]
        elif rate > 0:
            completion = points[-1][0] + remaining / rate
        if completion is not None and not printable_time(completion):
            completion = None
    risk = (due is not None and planned is not None and good < planned
            and (completion is None or completion > due + margin_s))
    return Estimate(rate, completion, stalled, risk)


def _slope(points: list[tuple[float, int]]) -> float:
    """The least-squares slope of good over time (what a degree-1 polyfit gives), in closed
    form on centred values: a page of orders fits thousands of operations, and numpy's
    per-call overhead was most of that page's time."""
    start = points[0][0]
    xs = [t - start for t, _ in points]
    ys = [float(g) for _, g in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx <= 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


@dataclass(frozen=True, slots=True)
class Assessment:
    """One operation's (or order's) estimated completion and delay-risk status."""

    completion: float | None
    risk: Risk


def assess_operation(*, closed: bool, ended: float | None, found: Estimate | None,
                     planned: int | None, due: float | None, now: float) -> Assessment:
    """The status of one operation: `ended` is when it closed (closed ones), `found` its
    estimate (open ones)."""
    if closed:
        end = ended if printable_time(ended) else None
        if due is None or end is None:
            return Assessment(end, "unknown")
        return Assessment(end, "missed" if end > due else "on_track")
    completion = found.completion if found is not None else None
    if due is None:
        return Assessment(completion, "unknown")
    if now > due:
        return Assessment(completion, "late")
    if planned is None or found is None:
        return Assessment(completion, "unknown")
    return Assessment(completion, "at_risk" if found.delay_risk else "on_track")


def assess_order(operations: Iterable[Assessment], due: float | None, now: float
                 ) -> Assessment:
    """An order's status from its operations' (see the module docstring)."""
    found = list(operations)
    if not found:
        return Assessment(None, "late" if due is not None and now > due else "unknown")
    risks = {a.risk for a in found}
    risk = next(r for r in _SEVERITY if r in risks)
    times = [a.completion for a in found]
    # The order is done when its last operation is; unknown while any estimate is.
    completion = max(t for t in times if t is not None) if None not in times else None
    return Assessment(completion, risk)
