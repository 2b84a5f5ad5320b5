"""The hub store: the packet log (which is also the fan-out outbox), per-source progress,
supplier cursors and dead letters, on SQLAlchemy Core; the same code runs on SQLite and PostgreSQL.

Delivery guarantee 4: each `(source, epoch, seq)` is stored once (a unique key, inserted with
ON CONFLICT DO NOTHING), repeats are counted, gaps are reported, never papered over.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from hub import migrate
from hub.ingest_sql import PacketRow, PgIngest, SqliteIngest
from hub.progress import Gap, Progress, advance, progress_save
from hub.schema import (
    alerts,
    assignments,
    audit_log,
    dead_letters,
    leases,
    op_state,
    packets,
    refused_seqs,
    source_progress,
    supplier_cursors,
)
from hub.state import StateRow, state_rows
from sync import topics
from sync.packet import Packet, parse_time

log = logging.getLogger(__name__)

# A dead letter keeps at most this much of its payload (and the whole payload's size), and a
# reason of at most REASON_CHARS: a flood of 64 KB junk costs the database little.
DEAD_LETTER_PREFIX = 4096
REASON_CHARS = 2000
# A packet's identity: (source, epoch, seq).
Ident = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated packet with its canonical JSON object (docs/packet.md's fields only, as
    `hub.validate.validate_event` re-serialises it) and, when the caller has it, that object's
    compact JSON text (stored as the body)."""

    packet: Packet
    raw: dict[str, Any]
    body: str | None = None
    # The event time the hub orders by (state, progress points), as hub/admission.py parsed
    # it (a time too far in the future is held at the hub's receive time); None: parse it.
    time: float | None = None


class DeadLetter(NamedTuple):
    """A message (or part of one) the hub could not take, kept for someone to see."""

    topic: str
    reason: str
    payload: bytes
    # How many bad events of the message this letter stands for.
    items: int = 1


@dataclass(slots=True)
class StoreResult:
    """What `store_batch` did: per-(source, epoch) progress, totals and gaps seen."""

    progress: dict[tuple[str, str], Progress] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    # (work order, operation) whose state this batch may have changed.
    state_keys: set[tuple[str, str]] = field(default_factory=set)
    # The rows this batch inserted: (pk, the packet's raw JSON object).
    inserted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Packets refused because their id is another packet's (dead-lettered by the store).
    id_clashes: int = 0

    @property
    def new(self) -> int:
        return sum(p.new for p in self.progress.values())

    @property
    def duplicates(self) -> int:
        return sum(p.duplicates for p in self.progress.values())

    @property
    def refused(self) -> int:
        return sum(p.refused for p in self.progress.values())

    def absorb(self, later: StoreResult) -> None:
        """Add the result of a later transaction of the same batch (a batch split to isolate
        an event the store refused): its progress is the newer one."""
        for key, prog in later.progress.items():
            mine = self.progress.get(key)
            if mine is None:
                self.progress[key] = prog
                continue
            mine.contiguous = max(mine.contiguous, prog.contiguous)
            mine.new += prog.new
            mine.duplicates += prog.duplicates
            mine.refused += prog.refused
        self.gaps = [g for g in self.gaps if g.first > self.progress[(g.source, g.epoch)]
                     .contiguous] + later.gaps
        self.state_keys |= later.state_keys
        self.inserted += later.inserted
        self.id_clashes += later.id_clashes


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


class Store:
    """The hub's database. Thread-safe: calls run in worker threads (`asyncio.to_thread`)."""

    def __init__(self, url: str) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            _create_private(Path(self.url.database))
        self.engine: Engine = sa.create_engine(self.url)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        # SQLite has one writer per file; serialising writers here avoids busy errors between
        # our own threads (other processes still wait on busy_timeout).
        self._write_lock = threading.Lock() if self.is_sqlite else None
        # Create or upgrade the schema (Alembic; hub/migrations).
        migrate.upgrade(self.engine)
        self._insert = (sqlite.insert if self.is_sqlite else postgresql.insert)
        # The ingest path's statements, built once (hub/ingest_sql.py): building an upsert
        # with its CASE guards costs about a millisecond, paid per batch.
        self._ingest: PgIngest | SqliteIngest = SqliteIngest() if self.is_sqlite else PgIngest()
        self._progress_save = progress_save(self._insert)
        # Fan-out's reads, built once too. On PostgreSQL they run in autocommit: a lone SELECT
        # needs no BEGIN and ROLLBACK around it (three round trips become one); a read of
        # several statements sees one snapshot per statement either way (READ COMMITTED).
        self._reader = (self.engine if self.is_sqlite
                        else self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        self._packets_after = _driver_sql(
            f"SELECT {', '.join(f.name for f in fields(StoredPacket))} FROM packets "
            "WHERE pk > %s ORDER BY pk LIMIT %s", self.is_sqlite)
        self._states_of = sa.select(op_state).where(
            op_state.c.work_order.in_(sa.bindparam("orders", expanding=True)))
        self._cursors_of = sa.select(supplier_cursors.c.supplier, supplier_cursors.c.last_pk
                                     ).where(supplier_cursors.c.supplier.in_(
                                         sa.bindparam("names", expanding=True)))
        cursor_upsert = self._insert(supplier_cursors)
        self._cursors_upsert = cursor_upsert.on_conflict_do_update(
            index_elements=[supplier_cursors.c.supplier],
            set_={"last_pk": cursor_upsert.excluded.last_pk})

    def close(self) -> None:
        self.engine.dispose()

    def with_own_pool(self, connections: int) -> Store:
        """This store on an engine of its own (same database, at most `connections`
        connections), for the supplier API: its reads never wait for a connection ingest
        holds, nor ingest for one of theirs. SQLite writers still share this store's lock
        (one writer per file). `close()` on it closes only its own pool."""
        if self.is_sqlite and self.url.database in (None, "", ":memory:"):
            return self  # a second engine would open another, empty, in-memory database
        view = copy.copy(self)
        view.engine = sa.create_engine(self.url, pool_size=connections, max_overflow=0)
        if self.is_sqlite:
            sa.event.listen(view.engine, "connect", _sqlite_pragmas)
        view._reader = (view.engine if self.is_sqlite
                        else view.engine.execution_options(isolation_level="AUTOCOMMIT"))
        return view

    # -- ingest ---------------------------------------------------------------------------

    def store_batch(self, batch: Sequence[Incoming], received_at: float | None = None, *,
                    refused: Sequence[Ident] = (),
                    letters: Sequence[DeadLetter] = ()) -> StoreResult:
        """Store a batch in one transaction; advance contiguous seqs; report duplicates and gaps.

        Duplicates (already stored, or repeated inside the batch) are absorbed and counted.
        Every touched `(source, epoch)` has its contiguous seq recomputed, duplicates included,
        so a hole that another hub worker filled is picked up on the next repeat. `refused`
        are identities of packets the hub dead-lettered: recorded as settled in the same
        transaction, so the acknowledgement can pass them; `letters`, the dead letters of the
        batch's messages, are written in it too (one commit for the whole batch).
        """
        result = StoreResult()
        if not batch and not refused:
            if letters:
                self.dead_letter_many(letters)
            return result
        now = time.time() if received_at is None else received_at
        for source, epoch, _seq in refused:
            prog = result.progress.get((source, epoch))
            if prog is None:
                prog = result.progress[(source, epoch)] = Progress(source, epoch, 0, 0)
            prog.refused += 1
        rows: list[PacketRow] = []
        seen: set[tuple[str, str, int]] = set()
        by_ident: dict[tuple[str, str, int], Incoming] = {}
        for item in batch:
            p = item.packet
            key = (p.source, p.sourceepoch)
            prog = result.progress.get(key)
            if prog is None:
                prog = result.progress[key] = Progress(p.source, p.sourceepoch, 0, 0)
            ident = (p.source, p.sourceepoch, p.seq)
            if ident in seen:
                prog.duplicates += 1
                continue
            seen.add(ident)
            by_ident[ident] = item
            rows.append(_packet_row(item, now))
        # One order of keys for every writer: two hub workers inserting the same keys cannot
        # deadlock on PostgreSQL. (Tuples: (source, epoch, seq) first, and unique.)
        rows.sort()
        with self._writing(), self.engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            # Lock each (source, epoch) progress row first, in one order: two hub workers that
            # store parts of one source's stream take turns, so the later one sees the earlier
            # one's rows and its contiguous walk misses nothing (no ack left behind).
            with _driver_errors(conn, "store_batch: lock and insert"):
                current, inserted = self._ingest.lock_and_insert(
                    dbapi, sorted(result.progress), rows, now)
            settled = self._write_refusals(conn, result, refused, letters,
                                           [i for i in seen if i not in inserted], by_ident, now)
            states = state_rows(((by_ident[i].packet, pk, by_ident[i].time)
                                 for i, pk in inserted.items()), now)
            result.state_keys = {(s.work_order, s.operation) for s in states}
            result.inserted = [(pk, by_ident[i].raw) for i, pk in inserted.items()]
            batch_seqs: dict[tuple[str, str], list[int]] = {}
            for source, epoch, seq in sorted(seen):
                prog = result.progress[(source, epoch)]
                batch_seqs.setdefault((source, epoch), []).append(seq)
                if (source, epoch, seq) in inserted:
                    prog.new += 1
                elif (source, epoch, seq) not in settled:
                    prog.duplicates += 1
            for source, epoch, seq in settled:
                batch_seqs.setdefault((source, epoch), []).append(seq)
            self._advance_all(conn, result, current, batch_seqs, states, now)
        return result

    def _write_refusals(self, conn: Connection, result: StoreResult, refused: Sequence[Ident],
                        letters: Sequence[DeadLetter], skipped: list[Ident],
                        by_ident: dict[Ident, Incoming], now: float) -> set[Ident]:
        """Write the batch's dead letters and settle its refused seqs, in its transaction.

        Rows the insert `skipped` that are stored under no (source, epoch, seq) clash on their
        `id`: refused, dead-lettered and settled here too, since the dedupe key (source, id)
        would otherwise swallow them and leave a hole for ever. Returns every settled seq.
        """
        clashes = self._id_clashes(conn, skipped, by_ident)
        letters = [*letters, *(
            DeadLetter(topics.up_events(topics.gateway_of(i[0])), reason,
                       (by_ident[i].body or "").encode())
            for i, reason in clashes.items())]
        if letters:
            conn.execute(dead_letters.insert(), _dead_letter_rows(letters, now))
        for source, epoch, _seq in clashes:
            result.progress[(source, epoch)].refused += 1
        result.id_clashes = len(clashes)
        settled = set(refused) | set(clashes)
        if settled:
            conn.execute(self._insert(refused_seqs).on_conflict_do_nothing(), [
                {"source": s, "epoch": e, "seq": q, "refused_at": now}
                for s, e, q in sorted(settled)])
        return settled

    def _id_clashes(self, conn: Connection, skipped: list[Ident],
                    by_ident: dict[Ident, Incoming]) -> dict[Ident, str]:
        """Of rows the insert skipped, those not stored under their own (source, epoch, seq):
        their `id` is taken by another packet of the source. Each with the reason."""
        if not skipped:
            return {}
        key = sa.tuple_(packets.c.source, packets.c.epoch, packets.c.seq)
        stored: set[Ident] = set()
        for i in range(0, len(skipped), 300):
            stored.update((r.source, r.epoch, r.seq) for r in conn.execute(
                sa.select(packets.c.source, packets.c.epoch, packets.c.seq)
                .where(key.in_(skipped[i:i + 300]))).all())
        return {
            ident: (f"id: {by_ident[ident].packet.id!r} is already the id of another packet "
                    f"of {ident[0]} (an id is unique per source; this is sequence {ident[2]})")
            for ident in skipped if ident not in stored}

    def _advance_all(self, conn: Connection, result: StoreResult,
                     current: dict[tuple[str, str], int],
                     batch_seqs: dict[tuple[str, str], list[int]], states: list[StateRow],
                     now: float) -> None:
        """Upsert `states`, and new contiguous seqs for every `(source, epoch)` of a batch.

        The usual case, a stream arriving in order: the batch's new seqs run on from the
        stored contiguous value, and nothing is stored past the run (one probe for all
        sources says so, in the statement that saves the new values and upserts the states).
        Anything else (a hole, rows stored past the run by an earlier out-of-order arrival or
        another worker) takes the full walk of `hub.progress.advance`.
        Fewer round trips matter: each one's reply waits for the GIL behind the busy ingest
        loop.
        """
        tentative: dict[tuple[str, str], int] = {}
        for key, prog in result.progress.items():
            prog.previous = current[key]
            # The batch's seqs, refused ones included (settled like stored ones).
            run = sorted({seq for seq in batch_seqs.get(key, ()) if seq > prog.previous})
            if run == list(range(prog.previous + 1, prog.previous + 1 + len(run))):
                tentative[key] = prog.previous + len(run)
        beyond: set[tuple[str, str]] = set()
        if states or tentative:
            with _driver_errors(conn, "store_batch: states and progress"):
                beyond = self._ingest.finish(conn.connection.dbapi_connection, states,
                                             tentative, now)
        for key, prog in sorted(result.progress.items()):
            if key in tentative and key not in beyond:
                prog.contiguous = tentative[key]  # saved by `finish`
                continue
            gap = advance(conn, prog, now, self._progress_save)
            if gap is not None:
                result.gaps.append(gap)

    def contiguous(self, source: str, epoch: str) -> int:
        """The highest contiguous seq stored for `(source, epoch)` (0 when none)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(source_progress.c.contiguous_seq).where(
                    source_progress.c.source == source, source_progress.c.epoch == epoch
                )
            ).scalar_one_or_none()
        return value or 0

    def dead_letter_many(self, letters: Sequence[DeadLetter | tuple[str, str, bytes]]) -> None:
        """Keep what the hub could not take, with the reason, for someone to see: at most
        DEAD_LETTER_PREFIX bytes of each payload (and its whole size)."""
        rows = _dead_letter_rows(letters, time.time())
        with self._writing(), self.engine.begin() as conn:
            conn.execute(dead_letters.insert(), rows)

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

    # -- fan-out --------------------------------------------------------------------------

    def packets_after(self, pk: int, limit: int) -> list[StoredPacket]:
        """Up to `limit` stored packets with a pk above `pk`, in pk order."""
        with self._reader.connect() as conn, _driver_errors(conn, self._packets_after):
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
        with self._reader.connect() as conn:
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
                .order_by(packets.c.event_time.desc()).limit(limit)
            ).all()
        return [(float(r.event_time), int(r.good)) for r in reversed(rows)]

    # -- assignments, audit, leases ----------------------------------------------------------

    def set_assignment(self, work_order: str, suppliers: Iterable[str], due: float | None
                       ) -> None:
        """Make `suppliers` the API-assigned suppliers of a work order (replacing earlier ones)."""
        now = time.time()
        with self._writing(), self.engine.begin() as conn:
            conn.execute(assignments.delete().where(assignments.c.work_order == work_order))
            rows = [{"work_order": work_order, "supplier": s, "due": due, "updated_at": now}
                    for s in sorted(set(suppliers))]
            if rows:
                conn.execute(assignments.insert(), rows)

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

    # -- alerts ---------------------------------------------------------------------------

    def open_states(self) -> list[Any]:
        """`op_state` rows of operations not completed or aborted."""
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(op_state).where(op_state.c.state.not_in(["Completed", "Aborted"]))
                .order_by(op_state.c.work_order, op_state.c.operation)).all())

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
        """Insert alert rows (body without its sequence); returns their pks in order."""
        pks: list[int] = []
        with self._writing(), self.engine.begin() as conn:
            for row in rows:
                pks.append(int(conn.execute(alerts.insert().values(**row)
                                            .returning(alerts.c.pk)).scalar_one()))
        return pks

    def unpublished_alerts(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(alerts).where(alerts.c.published.is_(False))
                                     .order_by(alerts.c.pk)).all())

    def mark_alerts_published(self, pks: Sequence[int]) -> None:
        if not pks:
            return
        with self._writing(), self.engine.begin() as conn:
            conn.execute(alerts.update().where(alerts.c.pk.in_(list(pks)))
                         .values(published=True))

    def alerts_for(self, supplier: str, after: int, limit: int) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(alerts.c.pk, alerts.c.body)
                .where(alerts.c.supplier == supplier, alerts.c.pk > after)
                .order_by(alerts.c.pk).limit(limit)).all())

    def max_pk(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(packets.c.pk), 0)))
                       .scalar_one())

    def count_packets(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(packets)).scalar_one())

    def get_cursors(self, suppliers: Iterable[str]) -> dict[str, int]:
        """Each supplier's cursor (the last pk it has been sent; 0 for a new supplier)."""
        names = list(suppliers)
        with self._reader.connect() as conn:
            rows = conn.execute(self._cursors_of, {"names": names}).all()
        found = {r.supplier: int(r.last_pk) for r in rows}
        return {name: found.get(name, 0) for name in names}

    def start_cursors(self, suppliers: Iterable[str]) -> dict[str, int]:
        """Give suppliers without a cursor one at the head of the log (see hub/fanout.py: a new
        supplier gets what arrives from now on; history is in the API's cursor feed)."""
        names = list(suppliers)
        if not names:
            return {}
        with self._writing(), self.engine.begin() as conn:
            head = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(packets.c.pk), 0))).scalar_one()
            stmt = self._insert(supplier_cursors).on_conflict_do_nothing()
            conn.execute(stmt, [{"supplier": s, "last_pk": int(head)} for s in names])
        return self.get_cursors(names)

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Persist supplier cursors (upsert)."""
        if not cursors:
            return
        with self._writing(), self.engine.begin() as conn:
            conn.execute(self._cursors_upsert,
                         [{"supplier": s, "last_pk": pk} for s, pk in cursors.items()])

    def _writing(self) -> threading.Lock | _NoLock:
        return self._write_lock or _NoLock()

    def writing(self) -> threading.Lock | _NoLock:
        """Hold around a write transaction of a module with tables of its own: SQLite has one
        writer per file (hub/webhooks/cursors.py)."""
        return self._writing()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """The driver's errors from work on the DBAPI cursor, raised as SQLAlchemy raises them
    from `Connection.execute` (hub/service.py retries on SQLAlchemyError), the connection
    invalidated when the database went away (the pool then replaces it)."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as error:
        gone = conn.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)
        if gone:
            conn.invalidate(error)
        raise sa.exc.DBAPIError.instance(statement, None, error, dbapi.Error,
                                         connection_invalidated=gone,
                                         dialect=conn.dialect) from error


def _dead_letter_rows(letters: Sequence[DeadLetter | tuple[str, str, bytes]], now: float
                      ) -> list[dict[str, Any]]:
    rows = []
    for letter in letters:
        topic, reason, payload, items = DeadLetter(*letter)
        rows.append({"received_at": now, "topic": _storable(topic, 512),
                     "reason": _storable(reason, REASON_CHARS),
                     "payload": bytes(payload[:DEAD_LETTER_PREFIX]),
                     "size": len(payload), "items": items})
    return rows


def _create_private(path: Path) -> None:
    """Create the SQLite file mode 0600 before SQLite does: it holds restricted params, and
    SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("hub database %s is readable by others (mode %o): chmod 600 it", path, mode,
                    extra={"path": str(path), "mode": f"{mode:o}"})


def _storable(text: str, size: int) -> str:
    """Text any database keeps as it is: PostgreSQL refuses NUL and lone surrogates are not
    UTF-8, so both are written escaped; cut to `size` characters."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:size]


def _driver_sql(sql: str, is_sqlite: bool) -> str:
    """SQL written for psycopg (`%s` binds) in the DBAPI's bind style."""
    return sql.replace("%s", "?") if is_sqlite else sql


def _packet_row(item: Incoming, received_at: float) -> PacketRow:
    """The values of hub/ingest_sql.py's PACKET_COLUMNS for one packet."""
    p = item.packet
    data = p.data
    return (
        p.source,
        p.sourceepoch,
        p.seq,
        p.id,
        p.type,
        p.subject,
        data.workOrder.id if data.workOrder else None,
        data.operation.id if data.operation else None,
        parse_time(p.time) if item.time is None else item.time,
        received_at,
        data.quantities.good if data.quantities is not None else None,
        item.body if item.body is not None else json.dumps(
            item.raw, separators=(",", ":"), ensure_ascii=False),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # First, so the pragmas below wait for another process's lock too. (The switch of a new
    # file to WAL does not wait even so: hub/migrate.py holds a file lock around it.)
    cursor.execute("PRAGMA busy_timeout=10000")
    # WAL lets fan-out read while ingest writes; FULL makes a commit durable before the ack.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
