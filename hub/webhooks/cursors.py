"""Per-endpoint webhook cursors and health in the hub database (`webhook_cursors`).

A cursor is the feed position of the last entry the endpoint has settled: delivered with a
2xx answer, or passed over by its type filter. It only moves forward (a save never lowers it,
so a hub process that lost the lease cannot move it back). The health columns are written by
the delivering process on each change, for every process's admin API and /metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from hub.schema import webhook_cursors
from hub.store import Store

_ERROR_CHARS = 512


@dataclass(frozen=True, slots=True)
class Health:
    """An endpoint's delivery health as last saved."""

    failing_since: float | None = None
    failing: bool = False
    last_status: int | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """One endpoint's saved row."""

    position: int
    health: Health


class Cursors:
    """The `webhook_cursors` table of one store. Thread-safe like the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, supplier: str, endpoint: str, position: int) -> int:
        """The endpoint's cursor, created at `position` if it has none yet."""
        with self.store.writing(), self.store.engine.begin() as conn:
            found = conn.execute(sa.select(webhook_cursors.c.position).where(
                *self._key(supplier, endpoint))).scalar_one_or_none()
            if found is not None:
                return int(found)
            conn.execute(webhook_cursors.insert().values(
                supplier=supplier, endpoint=endpoint, position=position, updated_at=time.time()))
        return position

    def save(self, supplier: str, endpoint: str, position: int) -> None:
        """Move the endpoint's cursor forward to `position` (never back)."""
        with self.store.writing(), self.store.engine.begin() as conn:
            conn.execute(webhook_cursors.update().where(
                *self._key(supplier, endpoint), webhook_cursors.c.position < position,
            ).values(position=position, updated_at=time.time()))

    def save_health(self, supplier: str, endpoint: str, health: Health) -> None:
        """Record the endpoint's health (a change of it)."""
        error = health.last_error
        with self.store.writing(), self.store.engine.begin() as conn:
            conn.execute(webhook_cursors.update().where(*self._key(supplier, endpoint)).values(
                failing_since=health.failing_since, failing=health.failing,
                last_status=health.last_status,
                last_error=None if error is None else error[:_ERROR_CHARS]))

    def all(self) -> dict[tuple[str, str], Saved]:
        """Every saved endpoint, by (supplier, endpoint)."""
        c = webhook_cursors.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(c.supplier, c.endpoint, c.position, c.failing_since,
                                          c.failing, c.last_status, c.last_error)).all()
        return {(r.supplier, r.endpoint): Saved(int(r.position), Health(
            r.failing_since, bool(r.failing), r.last_status, r.last_error)) for r in rows}

    @staticmethod
    def _key(supplier: str, endpoint: str) -> tuple[sa.ColumnElement[bool], ...]:
        return (webhook_cursors.c.supplier == supplier, webhook_cursors.c.endpoint == endpoint)
