"""The durable outbox: one SQLite file per gateway (= one packet source), via SQLAlchemy Core.

Rows are opaque bodies with a gap-free sequence number. The outbox knows rows, not packets: a
caller hands in entries whose `render(seq, epoch)` produces the body once the sequence is known,
so the identity is allocated inside the same transaction that stores it (docs/architecture.md,
"Delivery guarantees" 1).

`Outbox` is the one class callers use; it is made of the parts, one concept each:
`edge_store.store` (schema, opening, rendering, inserts, pending reads), `edge_store.recovery`
(the one-process lock, a corrupt file moved aside), `edge_store.bounds` (the bounds policy,
eviction and gap records), `edge_store.alarm` (the outbox-full alarm and its counters) and
`edge_store.onsite` (stats, export and purge for the on-site commands).

Threading: every method is blocking and may be called from any thread; the event loop reaches
the outbox through one dedicated thread (`edge_store.worker.OutboxWorker`). Writes share one
connection under one lock; reads (pending, stats) use a second connection under another lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import sqlalchemy as sa

from edge_store import onsite, recovery
from edge_store.alarm import Alarm
from edge_store.bounds import GAP_PRIORITY, Bounds, Eviction, GapEntry, Policy, Room, Tally
from edge_store.errors import (
    OutboxClosed,
    OutboxError,
    OutboxFull,
    OutboxLocked,
    RenderError,
    SourceMismatch,
)
from edge_store.onsite import OutboxStats
from edge_store.store import (
    ACKED,
    DELETE_UPTO,
    MAX_SEQ,
    SET_STATE,
    Entry,
    Render,
    Row,
    Store,
    Synchronous,
    is_full,
    transaction,
)

__all__ = [
    "GAP_PRIORITY",
    "Bounds",
    "Commit",
    "Entry",
    "Eviction",
    "GapEntry",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxFull",
    "OutboxLocked",
    "OutboxStats",
    "Policy",
    "Render",
    "RenderError",
    "Row",
    "SourceMismatch",
]


@dataclass(slots=True)
class Commit:
    """What one transaction did: the caller's rows, gap rows added, evictions, acked deletes."""

    rows: list[Row] = field(default_factory=list)
    gap_rows: list[Row] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
    deleted: int = 0

    @property
    def stored(self) -> list[Row]:
        """The caller's rows still stored after this transaction's evictions, plus gap rows."""
        if not self.evictions:
            return self.rows + self.gap_rows
        kept = [r for r in self.rows
                if not any(e.first <= r.seq <= e.last for e in self.evictions)]
        return kept + self.gap_rows


class _Batch(NamedTuple):
    """The rendered rows of one commit, with what the bounds need to know of them."""

    rows: list[Row]
    priorities: list[int]
    new_bytes: int
    now: float
    state: bytes | None  # the engine state to store with the rows (None: unchanged)


class _DiskFull(Exception):
    """SQLITE_FULL inside a transaction (rolled back)."""


class Outbox:
    """The durable outbox of one source.

    Opening a missing file creates it with a new epoch (a ULID); opening an existing file keeps
    its epoch and continues its sequence. Opening a file of another source raises
    `SourceMismatch`. A corrupt file is moved aside (`recovered_from` names where) and a new
    file with a new epoch takes its place.
    """

    def __init__(
        self,
        path: str | Path,
        source: str,
        *,
        synchronous: Synchronous = "FULL",
        bounds: Bounds | None = None,
        gap_entry: GapEntry | None = None,
        max_file_bytes: int | None = None,
        check: bool = True,
        exclusive: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise OutboxError(
                f"synchronous has value {synchronous!r}: expected 'FULL' or 'NORMAL'"
            )
        self.path = Path(path)
        self.bounds = bounds or Bounds()
        self.gap_entry = gap_entry
        self.max_file_bytes = max_file_bytes
        self.worker: Any = None
        """The `edge_store.worker.OutboxWorker` serving the event loop, once started."""
        self._lock_file: IO[str] | None = recovery.take_lock(self.path) if exclusive else None
        try:
            self._store, self.recovered_from = recovery.open_or_replace(
                self.path,
                lambda first: Store(self.path, source, synchronous=synchronous,
                                    max_file_bytes=max_file_bytes, check=check and first),
            )
        except BaseException:
            if self._lock_file is not None:
                self._lock_file.close()
            raise
        self._room = Room(self._store, self.bounds, gap_entry)
        self._alarm = Alarm(self._store, self.bounds)

    # --- what it is ----------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._store.engine

    @property
    def source(self) -> str:
        return self._store.source

    @property
    def epoch(self) -> str:
        return self._store.epoch

    @property
    def last_seq(self) -> int:
        """The highest sequence ever committed in this epoch (0 before the first append)."""
        return self._store.last_seq

    @property
    def pending_count(self) -> int:
        """Rows stored and not yet acknowledged (kept in memory, exact)."""
        return self._store.pending_count

    @property
    def full(self) -> bool:
        """The alarm: the last append found a bound (or the disk) full."""
        return self._alarm.full

    @property
    def evicted_packets(self) -> int:
        return self._alarm.evicted_packets

    @property
    def refused_appends(self) -> int:
        return self._alarm.refused_appends

    @property
    def disk_full(self) -> int:
        return self._alarm.disk_full

    # --- writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Commit `entries` in one transaction and return their sequences (consecutive).

        All or nothing: on `RenderError`, `OutboxFull` or a failed commit nothing is stored and
        no sequence is consumed, so sequences stay gap-free. Gap rows that an eviction adds
        come after the entries' sequences.
        """
        return [row.seq for row in self.commit(entries).rows]

    def ack(self, upto_seq: int) -> int:
        """Delete every row with seq <= `upto_seq` in one transaction; return how many went.

        Idempotent: acknowledging the same or a lower sequence again deletes nothing.
        """
        return self.commit([], ack_upto=upto_seq).deleted

    def commit(self, entries: Sequence[Entry], ack_upto: int = 0,
               state: bytes | None = None) -> Commit:
        """One transaction: delete acknowledged rows up to `ack_upto` (0: none), then append,
        and store `state` (the engine state that produced the entries) with them.

        Returns the stored rows (with their bodies, so the uplink need not read them back),
        any gap rows and evictions. A failed ack delete fails the whole transaction.
        """
        with self._store.write_lock:
            self._store.check_open()
            try:
                return self._commit(entries, ack_upto, state)
            except OutboxFull:
                if ack_upto <= 0 or not entries:
                    raise
            # The refusal rolled the acknowledged deletes back with it: those must happen
            # anyway (they are what makes room), so delete alone, then try the append again.
            deleted = self._commit([], ack_upto, None).deleted
            result = self._commit(entries, 0, state)
            result.deleted = deleted
            return result

    def engine_state(self) -> tuple[bytes, float] | None:
        """The engine state stored by the latest commit that carried one, and its time."""
        return self._store.engine_state()

    def _commit(self, entries: Sequence[Entry], ack_upto: int, state: bytes | None) -> Commit:
        """One try, and under `evict_low_priority` a second one that evicts for a full disk."""
        batch = self._batch(entries, state)
        try:
            return self._transaction(batch, ack_upto, disk_full=False)
        except OutboxFull:
            self._alarm.refused("refused")
            raise
        except _DiskFull:
            self._alarm.disk_full += 1
            if self.bounds.policy == "refuse" or not batch.rows:
                self._alarm.refused("disk full")
                raise OutboxFull(
                    f"outbox {self.path}: disk full (SQLITE_FULL); policy {self.bounds.policy}"
                ) from None
        try:
            return self._transaction(batch, ack_upto, disk_full=True)
        except _DiskFull:
            self._alarm.refused("disk full")
            raise OutboxFull(
                f"outbox {self.path}: disk full (SQLITE_FULL) even after evicting"
            ) from None

    def _batch(self, entries: Sequence[Entry], state: bytes | None) -> _Batch:
        rows = self._store.render(entries, self._store.last_seq + 1)
        return _Batch(rows, [entry.priority for entry in entries],
                      sum(len(row.body) for row in rows), time.time(), state)

    def _transaction(self, batch: _Batch, ack_upto: int, *, disk_full: bool) -> Commit:
        """Delete the acknowledged rows, insert the batch within the bounds, name what was
        evicted; then advance the in-memory counters (only once it has committed)."""
        store = self._store
        result = Commit(rows=batch.rows)
        tally = Tally(store.pending_count, store.pending_bytes)
        try:
            with transaction(store.raw):
                result.deleted = _delete_acked(store.raw, ack_upto, tally)
                self._room.insert(batch.rows, batch.priorities, batch.new_bytes, batch.now,
                                  tally, result.evictions, disk_full=disk_full)
                last = batch.rows[-1].seq if batch.rows else store.last_seq
                result.gap_rows, last = self._room.record(result.evictions, last, batch.now,
                                                          set_last=result.deleted > 0)
                if batch.state is not None:
                    store.raw.execute(SET_STATE, (batch.state, batch.now))
        except sqlite3.Error as error:
            raise self._failure(error, batch) from error
        self._settle(result, batch, tally, last)
        return result

    def _failure(self, error: sqlite3.Error, batch: _Batch) -> Exception:
        """The error to raise for a failed transaction (it rolled back; the in-memory counters
        were never advanced)."""
        if is_full(error):
            return _DiskFull()
        return OutboxError(
            f"outbox {self.path}: commit of {len(batch.rows)} rows failed: {error}"
        )

    def _settle(self, result: Commit, batch: _Batch, tally: Tally, last: int) -> None:
        """The committed transaction in the in-memory counters and the alarm."""
        store = self._store
        store.last_seq = last
        store.pending_count = tally.count + len(batch.rows) + len(result.gap_rows)
        store.pending_bytes = (
            tally.size + batch.new_bytes + sum(len(r.body) for r in result.gap_rows)
        )
        if result.evictions:
            self._alarm.evicted(result.evictions)
        elif batch.rows:
            self._alarm.appended()

    def purge(self, reason: str = "purged by operator") -> list[Eviction]:
        """Delete every pending row except gap rows, recording (and appending) gap rows."""
        return onsite.purge(self._room, reason)

    # --- reading -------------------------------------------------------------------------------

    def pending(self, after_seq: int, limit: int, upto_seq: int = MAX_SEQ) -> list[Row]:
        """Up to `limit` pending rows with `after_seq` < seq <= `upto_seq`, in seq order."""
        return self._store.pending(after_seq, limit, upto_seq)

    def stats(self) -> OutboxStats:
        """Pending count and bytes, first and last pending seq, last allocated seq, epoch,
        bounds, this process's eviction counters and the recorded gaps."""
        return onsite.stats(self._store, self._alarm)

    def export(self, after_seq: int = 0, chunk: int = 1000) -> Iterator[Row]:
        """Yield every pending row in seq order, `chunk` rows per read (memory stays flat)."""
        return onsite.export(self._store, after_seq, chunk)

    def close(self) -> None:
        """Close both connections; later calls raise `OutboxClosed`. Safe to call twice."""
        if self.worker is not None:
            self.worker.stop()  # finishes its queued work first
        self._store.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _delete_acked(conn: sqlite3.Connection, ack_upto: int, tally: Tally) -> int:
    """Delete the rows up to `ack_upto` (0: none) and take them off `tally`; return how many."""
    if ack_upto <= 0:
        return 0
    gone, gone_bytes = conn.execute(ACKED, (ack_upto,)).fetchone()
    if gone:
        conn.execute(DELETE_UPTO, (ack_upto,))
    tally.count -= int(gone)
    tally.size -= int(gone_bytes)
    return int(gone)
