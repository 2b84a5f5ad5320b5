"""Delay alerts: `keyop.alert.delay_risk` and `keyop.alert.stalled` for concerned suppliers.

Every `alerts.interval_s` (a loop on monotonic time; one hub worker at a time, the holder of the
`alerts` lease) each open operation is evaluated:

- stalled: it is Running and the hub has heard nothing of it for `stall_after_s` (hub clock,
  so an edge's wrong clock cannot fake or hide a stall);
- delay risk: its order has a due time (hub.yaml `orders:` or the API's assignment) and a
  planned quantity, and the completion estimated from its progress rate passes the due time by
  more than `margin_s`. The rate is a least-squares line (numpy) through the last `window`
  (event time, good) points; no progress at all counts as never finishing.

Once per change: an alert row is written, and published, only when a kind's status for a
supplier differs from the last one (raised, then cleared); it is then readable on
`keyop/v1/sup/{supplier}/alerts` (QoS 1, marked published on the broker's PUBACK, retried at
the next evaluation otherwise) and at `GET /v1/alerts`. An alert is a v1 packet whose source is
the hub (`hub/{hub id}`) and whose sequence is its row number in the hub's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from hub.api.context import ApiContext
from hub.config import HubConfig
from hub.store import Store
from sync import topics
from sync.packet import format_sequence, format_time

log = logging.getLogger(__name__)

LEASE = "alerts"
# Alerts are numbered in the hub's database, not by an outbox: one fixed epoch.
ALERT_EPOCH = "0" * 26
KINDS = ("delay_risk", "stalled")

Publish = Callable[[str, bytes], "asyncio.Future[None]"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the evaluation found for one operation."""

    rate_per_s: float
    completion: float | None  # None: never, at the current rate
    stalled: bool
    delay_risk: bool


def estimate(points: list[tuple[float, int]], planned: int | None, good: int,
             due: float | None, margin_s: float, stalled: bool) -> Estimate:
    """The completion estimate of one operation from its (event time, good) points."""
    rate = 0.0
    if len(points) >= 2:
        times = np.array([p[0] for p in points], dtype=float)
        goods = np.array([p[1] for p in points], dtype=float)
        if float(times[-1] - times[0]) > 0:
            rate = float(np.polyfit(times - times[0], goods, 1)[0])
    completion: float | None = None
    if planned is not None and points:
        remaining = max(planned - good, 0)
        if remaining == 0:
            completion = points[-1][0]
        elif rate > 0:
            completion = points[-1][0] + remaining / rate
    risk = (due is not None and planned is not None and good < planned
            and (completion is None or completion > due + margin_s))
    return Estimate(rate, completion, stalled, risk)


class Alerts:
    """The periodic evaluation. `evaluate` is synchronous (it runs in a worker thread)."""

    def __init__(self, config: HubConfig, store: Store, context: ApiContext) -> None:
        self.config = config
        self.store = store
        self.context = context
        self.holder = f"{config.hub.id}:alerts:{uuid.uuid4().hex[:12]}"
        self.raised = 0

    def evaluate(self, now: float | None = None) -> int:
        """Write one alert row per status change; returns how many were written."""
        now = time.time() if now is None else now
        settings = self.config.alerts
        status = self.store.alert_status()
        rows: list[dict[str, Any]] = []
        open_keys: set[tuple[str, str]] = set()
        for state in self.store.open_states():
            key = (state.work_order, state.operation)
            open_keys.add(key)
            points = self.store.progress_points(*key, settings.window)
            due = self.context.due(state.work_order)
            stalled = state.state == "Running" and now - state.received_at > settings.stall_after_s
            found = estimate(points, state.planned, state.good, due, settings.margin_s, stalled)
            active = {"delay_risk": found.delay_risk, "stalled": found.stalled}
            for supplier in self.config.suppliers:
                if not self.context.visible_state(supplier, state):
                    continue
                for kind in KINDS:
                    if status.get((*key, kind, supplier), False) != active[kind]:
                        rows.append(self._row(state, supplier, kind, active[kind], found, due,
                                              now))
        # Operations that closed clear whatever was raised for them.
        for (work_order, operation, kind, supplier), was in status.items():
            if was and (work_order, operation) not in open_keys:
                closed = self.store.states([(work_order, operation)]).get(
                    (work_order, operation))
                if closed is not None:
                    rows.append(self._row(closed, supplier, kind, False, None, None, now))
        if rows:
            self.store.add_alerts(rows)
            self.raised += sum(1 for r in rows if r["active"])
        return len(rows)

    def _row(self, state: Any, supplier: str, kind: str, active: bool,
             found: Estimate | None, due: float | None, now: float) -> dict[str, Any]:
        document = self.context.state_for(supplier, state)
        data: dict[str, Any] = {
            "kopVersion": "1.0",
            "workOrder": {"id": state.work_order},
            "operation": {"id": state.operation},
            "equipment": {"path": document["station"]},
            "alarm": {"code": kind, "severity": "warning", "active": active,
                      "text": _text(kind, active, found, due)},
            "quantities": document["quantities"],
            "tzOffset": "+00:00",
            "timeQuality": "synced",
        }
        if found is not None:
            data["estimate"] = {
                "ratePerHour": round(found.rate_per_s * 3600, 3),
                "completion": None if found.completion is None else format_time(found.completion),
                "due": None if due is None else format_time(due),
            }
        event = {
            "specversion": "1.0", "id": new_ulid(now), "source": f"hub/{self.config.hub.id}",
            "type": f"keyop.alert.{kind}", "subject": f"{state.work_order}/{state.operation}",
            "time": format_time(now), "recordedtime": format_time(now),
            "sequence": None, "sourceepoch": ALERT_EPOCH,
            "datacontenttype": "application/json", "dataschema": "keyop:packet:1", "data": data,
        }
        return {"work_order": state.work_order, "operation": state.operation, "kind": kind,
                "supplier": supplier, "active": active, "at": now, "published": False,
                "body": json.dumps(event, separators=(",", ":"))}

    async def publish_pending(self, publish: Publish, timeout_s: float = 10.0) -> int:
        """Publish alerts not yet acknowledged by the broker; mark those PUBACKed."""
        pending = await asyncio.to_thread(self.store.unpublished_alerts)
        sent: list[tuple[int, asyncio.Future[None]]] = []
        for row in pending:
            sent.append((row.pk, publish(topics.sup_alerts(row.supplier),
                                         packet_of(row.pk, row.body))))
        if sent:
            await asyncio.wait([f for _, f in sent], timeout=timeout_s)
        done = [pk for pk, f in sent
                if f.done() and not f.cancelled() and f.exception() is None]
        await asyncio.to_thread(self.store.mark_alerts_published, done)
        return len(done)

    async def run(self, stop: asyncio.Event, publish: Publish) -> None:
        """Evaluate every `alerts.interval_s` while holding the `alerts` lease."""
        interval = self.config.alerts.interval_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
                if stop.is_set():
                    break
                next_at = loop.time() + interval
                ttl = max(3 * interval, 15.0)
                if not await asyncio.to_thread(self.store.try_lease, LEASE, self.holder, ttl):
                    continue
                await asyncio.to_thread(self.context.reload)
                changes = await asyncio.to_thread(self.evaluate)
                if changes:
                    log.info("delay alerts changed", extra={"changes": changes})
                await self.publish_pending(publish)
        finally:
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self.store.release_lease, LEASE, self.holder)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(at: float) -> str:
    """A ULID (48-bit millisecond time, 80 random bits, Crockford base32) for an alert's id."""
    value = (int(at * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def packet_of(pk: int, body: str) -> bytes:
    """An alert row's packet, its sequence filled in from the row number."""
    event = json.loads(body)
    event["sequence"] = format_sequence(pk)
    return json.dumps(event, separators=(",", ":")).encode()


def _text(kind: str, active: bool, found: Estimate | None, due: float | None) -> str:
    if not active:
        return f"{kind.replace('_', ' ')} cleared"
    if kind == "stalled":
        return "no progress heard from the operation"
    if found is None or found.completion is None:
        return f"no progress: cannot finish by {format_time(due) if due else 'its due time'}"
    return (f"estimated completion {format_time(found.completion)} is after the due time "
            f"{format_time(due) if due else ''}")
