"""Delay alerts: `keyop.alert.delay_risk` and `keyop.alert.stalled` for concerned suppliers.

Every `alerts.interval_s` (a calendar job, hub/scheduler.py; one hub worker at a time, the
holder of the `alerts` lease) each open operation is evaluated:

- stalled: it is Running and the hub has heard nothing of it for `stall_after_s` (hub clock,
  so an edge's wrong clock cannot fake or hide a stall);
- delay risk (hub/risk.py, the rule the orders API shows too): its order has a due time
  (hub.yaml `orders:` or the API's assignment) and a planned quantity, and the completion
  estimated from its progress rate passes the due time by more than `margin_s`. The rate is
  a least-squares line through the last `window` (event time, good) points; no
  progress at all counts as never finishing.

Once per change: an alert row is written only when a kind's status for a supplier differs
from the last one (raised, then cleared, or for a delay risk whose operation completed after
its due time, missed), and in the same transaction the alert is appended to that supplier's
feed (hub/feed.py), so it goes out on every channel: MQTT (`keyop/v1/sup/{supplier}/alerts`),
`GET /v1/events`, the SSE stream and webhooks. An alert is one of the hub's own events
(hub/hub_events.py): source `hub/{hub id}`, a sequence per supplier, times at the plant's
offset, redacted like any event.

One odd stored row (a planned quantity of 2^63-1, customer orders that are not JSON, a due time
beyond year 9999) never stops the evaluation: that operation, or that supplier's view of it, is
skipped with a rate-limited WARNING naming the work order, the operation and the reason, and
the others are evaluated as usual. A completion estimate beyond year 9999 counts as "does not
finish at the current rate". An alert row that cannot be published is skipped the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hub.api.context import ApiContext
from hub.badrows import BAD_ROW, printable_time, reason
from hub.config import HubConfig
from hub.hub_events import at_offset, hub_event
from hub.log_throttle import RepeatedWarnings
from hub.risk import Estimate, estimate
from hub.scheduler import Job
from hub.store import Store

log = logging.getLogger(__name__)

LEASE = "alerts"
JOB = "alerts"
KINDS = ("delay_risk", "stalled")


class Alerts:
    """The periodic evaluation. `evaluate` is synchronous (it runs in a worker thread); `job`
    is its schedule."""

    def __init__(self, config: HubConfig, store: Store, context: ApiContext) -> None:
        self.config = config
        self.store = store
        self.context = context
        self.holder = f"{config.hub.id}:alerts:{uuid.uuid4().hex[:12]}"
        self.raised = 0
        # Evaluations completed, and operations (or one supplier's view of one) skipped for a
        # bad stored value (metrics, tests).
        self.evaluations = 0
        self.skipped = 0
        self._warnings = RepeatedWarnings(log, window_s=300.0)
        self._stopping = threading.Event()
        self._busy = asyncio.Lock()

    def evaluate(self, now: float | None = None) -> int:
        """Write one alert row per status change; returns how many were written."""
        now = time.time() if now is None else now
        status = self.store.alert_status()
        rows: list[dict[str, Any]] = []
        open_keys: set[tuple[str, str]] = set()
        for state in self.store.open_states():
            key = (state.work_order, state.operation)
            open_keys.add(key)
            try:
                found, due = self._estimate(state, now)
            except BAD_ROW as error:
                self._skip(state.work_order, state.operation, None, error)
                continue
            active = {"delay_risk": found.delay_risk, "stalled": found.stalled}
            for supplier in self.config.suppliers:
                try:
                    if not self.context.visible_state(supplier, state):
                        continue
                    # All of this supplier's rows, or none of them.
                    made = [self.alert_row(state, supplier, kind, active[kind], found, due, now)
                            for kind in KINDS
                            if status.get((*key, kind, supplier), False) != active[kind]]
                    rows.extend(made)
                except BAD_ROW as error:
                    self._skip(state.work_order, state.operation, supplier, error)
        # Operations that closed clear whatever was raised for them.
        for (work_order, operation, kind, supplier), was in status.items():
            if was and (work_order, operation) not in open_keys:
                closed = self.store.states([(work_order, operation)]).get(
                    (work_order, operation))
                if closed is None:
                    continue
                try:
                    due = self.context.due(work_order)
                    rows.append(self.alert_row(closed, supplier, kind, False, None,
                                               due if printable_time(due) else None, now))
                except BAD_ROW as error:
                    self._skip(work_order, operation, supplier, error)
        if rows:
            self.store.add_alerts(rows)
            self.raised += sum(1 for r in rows if r["active"])
        self.evaluations += 1
        return len(rows)

    def _estimate(self, state: Any, now: float) -> tuple[Estimate, float | None]:
        """One open operation's estimate and the due time it was compared with."""
        settings = self.config.alerts
        due = self.context.due(state.work_order)
        if due is not None and not printable_time(due):
            self._warnings.warning(
                f"due:{state.work_order}",
                "delay alerts: work order %s: due time %r is not a time the hub can print; "
                "only stalls are evaluated", state.work_order, due,
                extra={"work_order": state.work_order})
            due = None
        points = self.store.progress_points(state.work_order, state.operation, settings.window)
        stalled = state.state == "Running" and now - state.received_at > settings.stall_after_s
        return estimate(points, state.planned, state.good, due, settings.margin_s, stalled), due

    def _skip(self, work_order: str, operation: str, supplier: str | None,
              error: Exception) -> None:
        self.skipped += 1
        whom = f" for supplier {supplier}" if supplier else ""
        self._warnings.warning(
            f"skip:{work_order}/{operation}/{supplier or ''}",
            "delay alerts: work order %s operation %s skipped%s: %s",
            work_order, operation, whom, reason(error),
            extra={"work_order": work_order, "operation": operation, "supplier": supplier})

    def alert_row(self, state: Any, supplier: str, kind: str, active: bool,
                  found: Estimate | None, due: float | None, now: float) -> dict[str, Any]:
        """One alert row, its `body` the event without its sequence (hub/hub_events.py).

        `alarm.status` is `raised` or `cleared`, and `missed` for a delay risk closed by a
        completion after the due time. `estimate` comes with every alert of an open
        operation."""
        document = self.context.state_for(supplier, state)
        offset = self.store.plant_offset(state.work_order)
        status = "raised" if active else "cleared"
        if (not active and kind == "delay_risk" and found is None and due is not None
                and state.state == "Completed" and state.completed_at is not None
                and state.completed_at > due):
            status = "missed"
        data: dict[str, Any] = {
            "workOrder": {"id": state.work_order},
            "operation": {"id": state.operation},
            "equipment": {"path": document["station"]},
            "alarm": {"code": kind, "severity": "warning", "active": active, "status": status,
                      "text": _text(kind, status, found, due, offset)},
            "quantities": document["quantities"],
        }
        if found is not None:
            data["estimate"] = {
                "ratePerHour": round(found.rate_per_s * 3600, 3),
                "completion": (None if found.completion is None
                               else at_offset(found.completion, offset)),
                "due": None if due is None else at_offset(due, offset),
            }
        event = hub_event(self.config.hub.id, f"keyop.alert.{kind}",
                          f"{state.work_order}/{state.operation}", now, offset, data)
        return {"work_order": state.work_order, "operation": state.operation, "kind": kind,
                # Published through the supplier's feed (hub/fanout.py), not from this row.
                "supplier": supplier, "active": active, "at": now, "published": True,
                # allow_nan=False: a value that is not finite is refused here (ValueError),
                # never stored as JSON no reader accepts.
                "body": json.dumps(event, separators=(",", ":"), allow_nan=False)}

    def job(self) -> Job:
        """The evaluation as a calendar job (hub/scheduler.py), every `alerts.interval_s`."""
        self._stopping.clear()
        return Job(JOB, self.config.alerts.interval_s, self._tick, self._close)

    async def _tick(self) -> None:
        """One evaluation, if this worker holds (or takes) the `alerts` lease."""
        async with self._busy:
            if self._stopping.is_set():
                return
            ttl = max(3 * self.config.alerts.interval_s, 15.0)
            if not await asyncio.to_thread(self.store.try_lease, LEASE, self.holder, ttl):
                return
            await asyncio.to_thread(self.context.reload)
            changes = await asyncio.to_thread(self.evaluate)
            if changes:
                log.info("delay alerts changed", extra={"changes": changes})

    async def _close(self) -> None:
        self._stopping.set()
        async with self._busy:  # an evaluation under way finishes first
            pass
        with contextlib.suppress(SQLAlchemyError):  # it expires by itself
            await asyncio.to_thread(self.store.release_lease, LEASE, self.holder)


def _text(kind: str, status: str, found: Estimate | None, due: float | None,
          offset: str) -> str:
    if status == "missed":
        return f"completed after its due time {at_offset(due, offset) if due else ''}".rstrip()
    if status == "cleared":
        return f"{kind.replace('_', ' ')} cleared"
    if kind == "stalled":
        return "no progress heard from the operation"
    when = at_offset(due, offset) if due else "its due time"
    if found is None or found.completion is None:
        if found is not None and found.rate_per_s > 0:
            return f"at the current rate it cannot finish by {when}"
        return f"no progress: cannot finish by {when}"
    return (f"estimated completion {at_offset(found.completion, offset)} is after the due "
            f"time {when}")
