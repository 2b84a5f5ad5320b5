"""The hub store's reads: packets, operation states, progress points, dead letters, counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from hub.schema import dead_letters, op_state, packets, source_progress
from hub.store_base import StoreBase, driver_errors

# Work orders per read of `progress_points_of` (bounded bind parameters per statement).
POINTS_CHUNK = 500


@dataclass(frozen=True, slots=True)
class StoredPacket:
    """One row of the packet log, as fan-out reads it."""

    pk: int
    source: str
    epoch: str
    seq: int
    id: str
    type: str
    work_order: str | None
    operation: str | None
    event_time: float
    body: str


class ReadsMixin(StoreBase):
    """Reads of what ingest stored."""

    def contiguous(self, source: str, epoch: str) -> int:
        """The highest contiguous seq stored for `(source, epoch)` (0 when none)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(source_progress.c.contiguous_seq).where(
                    source_progress.c.source == source, source_progress.c.epoch == epoch
                )
            ).scalar_one_or_none()
        return value or 0

    def dead_letter_rows(self) -> list[Any]:
        """All dead letters with every column, oldest first."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(dead_letters).order_by(dead_letters.c.pk)).all())

    def list_dead_letters(self) -> list[tuple[str, str, bytes]]:
        """All dead letters as `(topic, reason, payload prefix)`, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dead_letters.c.topic, dead_letters.c.reason, dead_letters.c.payload)
                .order_by(dead_letters.c.pk)
            ).all()
        return [(r.topic, r.reason, bytes(r.payload)) for r in rows]

    def packets_after(self, pk: int, limit: int) -> list[StoredPacket]:
        """Up to `limit` stored packets with a pk above `pk`, in pk order."""
        with self.reader.connect() as conn, driver_errors(conn, self._packets_after):
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(self._packets_after, (pk, limit))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        return [StoredPacket(*row) for row in rows]

    def latest_state_pk(self, work_order: str, operation: str) -> int | None:
        """The pk of the newest operation event of a work order's operation (hub/state.py rule:
        per-source sequence, then event time; arrival order does not decide)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(op_state.c.last_pk).where(
                    op_state.c.work_order == work_order, op_state.c.operation == operation)
            ).scalar_one_or_none()

    def states(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """The `op_state` rows of some (work order, operation) pairs."""
        wanted = set(pairs)
        if not wanted:
            return {}
        orders = sorted({w for w, _ in wanted})
        found: dict[tuple[str, str], Any] = {}
        with self.reader.connect() as conn:
            for i in range(0, len(orders), 500):
                rows = conn.execute(self._states_of, {"orders": orders[i:i + 500]}).all()
                for row in rows:
                    if (row.work_order, row.operation) in wanted:
                        found[(row.work_order, row.operation)] = row
        return found

    def list_states(self, after: str | None, limit: int,
                    work_order: str | None = None) -> list[Any]:
        """`op_state` rows in (work order, operation) order, after a work order (exclusive)."""
        query = sa.select(op_state).order_by(op_state.c.work_order, op_state.c.operation)
        if work_order is not None:
            query = query.where(op_state.c.work_order == work_order)
        if after is not None:
            query = query.where(op_state.c.work_order > after)
        with self.engine.connect() as conn:
            return list(conn.execute(query.limit(limit)).all())

    def progress_points(self, work_order: str, operation: str, limit: int
                        ) -> list[tuple[float, int]]:
        """The newest `(event time, good)` points of an operation, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(packets.c.event_time, packets.c.good)
                .where(packets.c.work_order == work_order, packets.c.operation == operation,
                       packets.c.good.is_not(None))
                .order_by(packets.c.event_time.desc(), packets.c.pk.desc()).limit(limit)
            ).all()
        return [(float(r.event_time), int(r.good)) for r in reversed(rows)]

    def progress_points_of(self, work_orders: Iterable[str], limit: int
                           ) -> dict[tuple[str, str], list[tuple[float, int]]]:
        """`progress_points` of every operation of these work orders, by (work order,
        operation), in one read per POINTS_CHUNK orders (a page of orders needs them all)."""
        names = sorted(set(work_orders))
        found: dict[tuple[str, str], list[tuple[float, int]]] = {}
        p = packets.c
        for start in range(0, len(names), POINTS_CHUNK):
            newest = sa.func.row_number().over(
                partition_by=(p.work_order, p.operation),
                order_by=(p.event_time.desc(), p.pk.desc())).label("newest")
            ranked = (sa.select(p.work_order, p.operation, p.event_time, p.good, newest)
                      .where(p.work_order.in_(names[start:start + POINTS_CHUNK]),
                             p.good.is_not(None))
                      .subquery())
            query = (sa.select(ranked.c.work_order, ranked.c.operation, ranked.c.event_time,
                               ranked.c.good)
                     .where(ranked.c.newest <= limit)
                     .order_by(ranked.c.work_order, ranked.c.operation,
                               ranked.c.newest.desc()))
            with self.reader.connect() as conn:
                for r in conn.execute(query):
                    found.setdefault((r.work_order, r.operation), []).append(
                        (float(r.event_time), int(r.good)))
        return found

    def open_states(self) -> list[Any]:
        """`op_state` rows of operations not completed or aborted."""
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(op_state).where(op_state.c.state.not_in(["Completed", "Aborted"]))
                .order_by(op_state.c.work_order, op_state.c.operation)).all())

    def count_packets(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(packets)).scalar_one())

