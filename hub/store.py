"""The hub store: the packet log (which is also the fan-out outbox), per-source progress,
supplier cursors and dead letters, on SQLAlchemy Core; the same code runs on SQLite and PostgreSQL.

Delivery guarantee 4: each `(source, epoch, seq)` is stored once (a unique key, inserted with
ON CONFLICT DO NOTHING), repeats are counted, gaps are reported, never papered over.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from hub.schema import dead_letters, metadata, packets, source_progress, supplier_cursors
from sync.packet import Packet, parse_time

# How many stored seqs one step of the contiguous walk reads.
_WALK_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated packet with its raw JSON object (kept as is, unknown fields included)."""

    packet: Packet
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing seqs `first..last` for one `(source, epoch)`, with later seqs already stored."""

    source: str
    epoch: str
    first: int
    last: int


@dataclass(slots=True)
class Progress:
    """The outcome of one batch for one `(source, epoch)`."""

    source: str
    epoch: str
    contiguous: int
    previous: int
    new: int = 0
    duplicates: int = 0

    @property
    def advanced(self) -> bool:
        return self.contiguous > self.previous


@dataclass(slots=True)
class StoreResult:
    """What `store_batch` did: per-(source, epoch) progress, totals and gaps seen."""

    progress: dict[tuple[str, str], Progress] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def new(self) -> int:
        return sum(p.new for p in self.progress.values())

    @property
    def duplicates(self) -> int:
        return sum(p.duplicates for p in self.progress.values())


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
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(self.url)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        # SQLite has one writer per file; serialising writers here avoids busy errors between
        # our own threads (other processes still wait on busy_timeout).
        self._write_lock = threading.Lock() if self.is_sqlite else None
        metadata.create_all(self.engine)
        self._insert = (sqlite.insert if self.is_sqlite else postgresql.insert)

    def close(self) -> None:
        self.engine.dispose()

    # -- ingest ---------------------------------------------------------------------------

    def store_batch(self, batch: Sequence[Incoming], received_at: float | None = None
                    ) -> StoreResult:
        """Store a batch in one transaction; advance contiguous seqs; report duplicates and gaps.

        Duplicates (already stored, or repeated inside the batch) are absorbed and counted.
        Every touched `(source, epoch)` has its contiguous seq recomputed, duplicates included,
        so a hole that another hub worker filled is picked up on the next repeat.
        """
        result = StoreResult()
        if not batch:
            return result
        now = time.time() if received_at is None else received_at
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str, int]] = set()
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
            rows.append(_row(item, now))
        with self._writing(), self.engine.begin() as conn:
            inserted: set[tuple[str, str, int]] = set()
            if rows:
                stmt = (
                    self._insert(packets)
                    .on_conflict_do_nothing()
                    .returning(packets.c.source, packets.c.epoch, packets.c.seq)
                )
                inserted = {(r.source, r.epoch, r.seq) for r in conn.execute(stmt, rows)}
            for source, epoch, seq in seen:
                prog = result.progress[(source, epoch)]
                if (source, epoch, seq) in inserted:
                    prog.new += 1
                else:
                    prog.duplicates += 1
            for prog in result.progress.values():
                gap = self._advance(conn, prog, now)
                if gap is not None:
                    result.gaps.append(gap)
        return result

    def _advance(self, conn: Connection, prog: Progress, now: float) -> Gap | None:
        """Walk stored seqs after the contiguous value; persist the new value; return a gap."""
        current = conn.execute(
            sa.select(source_progress.c.contiguous_seq).where(
                source_progress.c.source == prog.source, source_progress.c.epoch == prog.epoch
            )
        ).scalar_one_or_none()
        prog.previous = contiguous = current or 0
        gap: Gap | None = None
        while True:
            seqs = conn.execute(
                sa.select(packets.c.seq)
                .where(
                    packets.c.source == prog.source,
                    packets.c.epoch == prog.epoch,
                    packets.c.seq > contiguous,
                )
                .order_by(packets.c.seq)
                .limit(_WALK_CHUNK)
            ).scalars().all()
            for seq in seqs:
                if seq != contiguous + 1:
                    gap = Gap(prog.source, prog.epoch, contiguous + 1, seq - 1)
                    break
                contiguous = seq
            if gap is not None or len(seqs) < _WALK_CHUNK:
                break
        prog.contiguous = contiguous
        if current is None or contiguous > current:
            stmt = self._insert(source_progress).values(
                source=prog.source, epoch=prog.epoch, contiguous_seq=contiguous, updated_at=now
            )
            excluded = stmt.excluded
            # Never move backwards, even if a concurrent hub worker got further.
            stmt = stmt.on_conflict_do_update(
                index_elements=[source_progress.c.source, source_progress.c.epoch],
                set_={
                    "contiguous_seq": sa.case(
                        (excluded.contiguous_seq > source_progress.c.contiguous_seq,
                         excluded.contiguous_seq),
                        else_=source_progress.c.contiguous_seq,
                    ),
                    "updated_at": excluded.updated_at,
                },
            )
            conn.execute(stmt)
        return gap

    def contiguous(self, source: str, epoch: str) -> int:
        """The highest contiguous seq stored for `(source, epoch)` (0 when none)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(source_progress.c.contiguous_seq).where(
                    source_progress.c.source == source, source_progress.c.epoch == epoch
                )
            ).scalar_one_or_none()
        return value or 0

    def dead_letter_many(self, letters: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep invalid payloads `(topic, reason, payload)` with the reason, for someone to see."""
        now = time.time()
        rows = [
            {"received_at": now, "topic": topic, "reason": reason, "payload": payload}
            for topic, reason, payload in letters
        ]
        with self._writing(), self.engine.begin() as conn:
            conn.execute(dead_letters.insert(), rows)

    def list_dead_letters(self) -> list[tuple[str, str, bytes]]:
        """All dead letters as `(topic, reason, payload)`, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dead_letters.c.topic, dead_letters.c.reason, dead_letters.c.payload)
                .order_by(dead_letters.c.pk)
            ).all()
        return [(r.topic, r.reason, bytes(r.payload)) for r in rows]

    # -- fan-out --------------------------------------------------------------------------

    def packets_after(self, pk: int, limit: int) -> list[StoredPacket]:
        """Up to `limit` stored packets with a pk above `pk`, in pk order."""
        cols = [packets.c[f.name] for f in fields(StoredPacket)]
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*cols).where(packets.c.pk > pk).order_by(packets.c.pk).limit(limit)
            ).all()
        return [StoredPacket(*row) for row in rows]

    def latest_state_pk(self, work_order: str, operation: str) -> int | None:
        """The pk of the newest operation packet of a work order's operation.

        Newest by event time, then sequence: arrival order does not decide (guarantee 6).
        """
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(packets.c.pk)
                .where(
                    packets.c.work_order == work_order,
                    packets.c.operation == operation,
                    packets.c.type.like("keyop.operation.%"),
                )
                .order_by(packets.c.event_time.desc(), packets.c.seq.desc(), packets.c.pk.desc())
                .limit(1)
            ).scalar_one_or_none()

    def count_packets(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(packets)).scalar_one())

    def get_cursors(self, suppliers: Iterable[str]) -> dict[str, int]:
        """Each supplier's cursor (the last pk it has been sent; 0 for a new supplier)."""
        names = list(suppliers)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(supplier_cursors.c.supplier, supplier_cursors.c.last_pk).where(
                    supplier_cursors.c.supplier.in_(names)
                )
            ).all()
        found = {r.supplier: int(r.last_pk) for r in rows}
        return {name: found.get(name, 0) for name in names}

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Persist supplier cursors (upsert)."""
        if not cursors:
            return
        stmt = self._insert(supplier_cursors)
        stmt = stmt.on_conflict_do_update(
            index_elements=[supplier_cursors.c.supplier],
            set_={"last_pk": stmt.excluded.last_pk},
        )
        with self._writing(), self.engine.begin() as conn:
            conn.execute(stmt, [{"supplier": s, "last_pk": pk} for s, pk in cursors.items()])

    def _writing(self) -> threading.Lock | _NoLock:
        return self._write_lock or _NoLock()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _row(item: Incoming, received_at: float) -> dict[str, Any]:
    p = item.packet
    data = p.data
    return {
        "source": p.source,
        "epoch": p.sourceepoch,
        "seq": p.seq,
        "id": p.id,
        "type": p.type,
        "subject": p.subject,
        "work_order": data.workOrder.id if data.workOrder else None,
        "operation": data.operation.id if data.operation else None,
        "event_time": parse_time(p.time),
        "received_at": received_at,
        "body": json.dumps(item.raw, separators=(",", ":"), ensure_ascii=False),
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets fan-out read while ingest writes; FULL makes a commit durable before the ack.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
