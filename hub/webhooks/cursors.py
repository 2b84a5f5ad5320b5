"""Per-endpoint webhook cursors in the hub database (`webhook_cursors`).

A cursor is the feed position of the last entry the endpoint has settled: delivered with a
2xx answer, or passed over by its type filter. It only moves forward (a save never lowers it,
so a hub process that lost the lease cannot move it back).
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from hub.schema import webhook_cursors
from hub.store import Store


class Cursors:
    """The `webhook_cursors` table of one store. Thread-safe like the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, supplier: str, endpoint: str, position: int) -> int:
        """The endpoint's cursor, created at `position` if it has none yet."""
        key = (webhook_cursors.c.supplier == supplier) & (webhook_cursors.c.endpoint == endpoint)
        with self.store.writing(), self.store.engine.begin() as conn:
            found = conn.execute(sa.select(webhook_cursors.c.position).where(key)
                                 ).scalar_one_or_none()
            if found is not None:
                return int(found)
            conn.execute(webhook_cursors.insert().values(
                supplier=supplier, endpoint=endpoint, position=position, updated_at=time.time()))
        return position

    def save(self, supplier: str, endpoint: str, position: int) -> None:
        """Move the endpoint's cursor forward to `position` (never back)."""
        with self.store.writing(), self.store.engine.begin() as conn:
            conn.execute(webhook_cursors.update().where(
                webhook_cursors.c.supplier == supplier,
                webhook_cursors.c.endpoint == endpoint,
                webhook_cursors.c.position < position,
            ).values(position=position, updated_at=time.time()))

    def all(self) -> dict[tuple[str, str], int]:
        """Every saved cursor, by (supplier, endpoint)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(webhook_cursors.c.supplier, webhook_cursors.c.endpoint,
                                          webhook_cursors.c.position)).all()
        return {(r.supplier, r.endpoint): int(r.position) for r in rows}
