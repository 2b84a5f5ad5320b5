"""The hub store's bookkeeping: order assignments, the API audit log, retention purges,
leases (which worker runs a singleton job) and MQTT fan-out cursors."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from hub import feed_store
from hub.schema import assignments, audit_log, dead_letters, leases
from hub.store_base import StoreBase


class AdminMixin(StoreBase):
    """Assignments, audit, purges, leases and cursors."""

    def set_assignment(self, work_order: str, suppliers: Iterable[str], due: float | None
                       ) -> None:
        """Make `suppliers` the API-assigned suppliers of a work order (replacing earlier ones),
        and append the change to the feeds concerned (hub/feed_route.py): `removed` for
        suppliers that lose it (what they were sent stays), `added` and the order's history
        for new ones, `added` again where only the due time changed."""
        now = time.time()
        wanted = sorted(set(suppliers))
        appended = 0
        with self._writing(), self.engine.begin() as conn:
            if self.feed_routing is not None:
                # Ingest waits while this commits: its events are in the backfill or routed
                # by the new assignment (hub/feed_route.py).
                if self.is_sqlite:
                    self._take_write_lock(conn)
                else:
                    conn.exec_driver_sql("LOCK TABLE packets IN SHARE MODE")
            before = {r.supplier: r.due for r in conn.execute(
                sa.select(assignments.c.supplier, assignments.c.due)
                .where(assignments.c.work_order == work_order))}
            conn.execute(assignments.delete().where(assignments.c.work_order == work_order))
            rows = [{"work_order": work_order, "supplier": s, "due": due, "updated_at": now}
                    for s in wanted]
            if rows:
                conn.execute(assignments.insert(), rows)
            if self.feed_routing is not None:
                appends = self.feed_routing.assignment_entries(conn, work_order, before,
                                                               wanted, due, now)
                appended = len(feed_store.append(conn, appends, now))
        if appended:
            self.appended.notify()

    def list_assignments(self) -> list[tuple[str, str, float | None]]:
        """All `(work order, supplier, due)` assignments."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(assignments.c.work_order, assignments.c.supplier,
                                          assignments.c.due)).all()
        return [(r.work_order, r.supplier, r.due) for r in rows]

    def audit(self, entries: Sequence[dict[str, Any]]) -> None:
        """Append API audit entries (at, supplier, method, path, query, status, client)."""
        if not entries:
            return
        with self._writing(), self.engine.begin() as conn:
            conn.execute(audit_log.insert(), list(entries))

    def list_audit(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log).order_by(audit_log.c.pk)).all())

    # Tables with a retention (hub/retention.py), and the column their age is read from.
    PURGEABLE = {"dead_letters": (dead_letters, dead_letters.c.received_at),
                 "audit_log": (audit_log, audit_log.c.at)}

    def purge(self, table: str, before: float, limit: int) -> int:
        """Delete up to `limit` rows of `table` (a PURGEABLE name) older than `before` (epoch
        seconds), in one short transaction; returns how many went. Idempotent: workers that
        purge at once only share the work."""
        if table not in self.PURGEABLE:
            raise ValueError(f"purge: unknown table {table!r} (known: "
                             f"{', '.join(sorted(self.PURGEABLE))})")
        rows, age = self.PURGEABLE[table]
        oldest = sa.select(rows.c.pk).where(age < before).limit(limit).scalar_subquery()
        with self._writing(), self.engine.begin() as conn:
            return int(conn.execute(rows.delete().where(rows.c.pk.in_(oldest))).rowcount)

    def try_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `holder` unless another holder's is still valid."""
        now = time.time()
        stmt = self._insert(leases).values(name=name, holder=holder, expires_at=now + ttl_s)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={"holder": ex.holder, "expires_at": ex.expires_at},
            where=sa.or_(leases.c.holder == ex.holder, leases.c.expires_at < now),
        )
        with self._writing(), self.engine.begin() as conn:
            conn.execute(stmt)
            current = conn.execute(
                sa.select(leases.c.holder).where(leases.c.name == name)).scalar_one()
        return bool(current == holder)

    def release_lease(self, name: str, holder: str) -> None:
        with self._writing(), self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def take_over_lease(self, name: str, previous: str, holder: str, ttl_s: float) -> bool:
        """Give lease `name` to `holder` if `previous` still holds it (a holder known gone)."""
        with self._writing(), self.engine.begin() as conn:
            taken = conn.execute(leases.update().where(
                leases.c.name == name, leases.c.holder == previous).values(
                holder=holder, expires_at=time.time() + ttl_s)).rowcount
        return bool(taken)

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease `name` (valid or expired), or None."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(leases.c.holder).where(leases.c.name == name)).scalar_one_or_none()

    def get_cursors(self, suppliers: Iterable[str]) -> dict[str, int]:
        """Each supplier's MQTT cursor: the last position of its feed the broker has taken (0
        for a new supplier: its feed holds only what was routed to it since it was added)."""
        names = list(suppliers)
        with self.reader.connect() as conn:
            rows = conn.execute(self._cursors_of, {"names": names}).all()
        found = {r.supplier: int(r.position) for r in rows}
        return {name: found.get(name, 0) for name in names}

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Persist supplier cursors (upsert)."""
        if not cursors:
            return
        with self._writing(), self.engine.begin() as conn:
            conn.execute(self._cursors_upsert,
                         [{"supplier": s, "position": p} for s, p in cursors.items()])

