"""The hub store's alerts: each alert's status history, and its feed entries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from hub import feed_store, hub_events
from hub.schema import alerts
from hub.store_base import StoreBase


class AlertsMixin(StoreBase):
    """Alert rows: one per status change of (work order, operation, kind, supplier)."""

    def alert_status(self) -> dict[tuple[str, str, str, str], bool]:
        """The latest `active` of every (work order, operation, kind, supplier)."""
        latest = (sa.select(sa.func.max(alerts.c.pk))
                  .group_by(alerts.c.work_order, alerts.c.operation, alerts.c.kind,
                            alerts.c.supplier).scalar_subquery())
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(alerts.c.work_order, alerts.c.operation, alerts.c.kind,
                          alerts.c.supplier, alerts.c.active).where(alerts.c.pk.in_(latest))
            ).all()
        return {(r.work_order, r.operation, r.kind, r.supplier): bool(r.active) for r in rows}

    def add_alerts(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert alert rows (`body`: the event without its sequence) and append each to its
        supplier's feed in the same transaction; returns the rows' pks in order."""
        pks: list[int] = []
        appended = 0
        now = max((float(r["at"]) for r in rows), default=0.0)
        with self._writing(), self.engine.begin() as conn:
            for row in rows:
                pks.append(int(conn.execute(alerts.insert().values(**row)
                                            .returning(alerts.c.pk)).scalar_one()))
            if self.feed_routing is not None and rows:
                appends = [self.feed_routing.hub_append(
                    r["supplier"], json.loads(r["body"]), r["work_order"], r["operation"])
                    for r in rows]
                appended = len(feed_store.append(conn, appends, now))
        if appended:
            self.appended.notify()
        return pks

    def plant_offset(self, work_order: str | None) -> str:
        """The plant's UTC offset for a hub event about `work_order` (hub/hub_events.py)."""
        configured = (self.feed_routing.config.hub.tz_offset
                      if self.feed_routing is not None else None)
        with self.engine.connect() as conn:
            return hub_events.plant_offset(conn, configured, work_order)
