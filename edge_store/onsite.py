"""What the on-site commands (`keyop outbox stats|export|purge`) do to an outbox."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from edge_store.alarm import Alarm
from edge_store.bounds import Eviction, Room, evict
from edge_store.errors import OutboxError
from edge_store.store import MAX_SEQ, Row, Store, gaps_table, outbox_table, transaction

# The outbox's one logger, whichever of its modules logs.
log = logging.getLogger("edge_store.outbox")


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of the outbox: what is still pending and how far allocation has gone."""

    source: str
    epoch: str
    last_seq: int
    pending: int
    pending_bytes: int
    first_pending_seq: int | None
    last_pending_seq: int | None
    max_packets: int | None = None
    max_bytes: int | None = None
    policy: str = "refuse"
    evicted_packets: int = 0
    """Rows this process evicted (the durable record is `gaps`)."""
    refused_appends: int = 0
    disk_full: int = 0
    full: bool = False
    """The alarm: the last append found a bound (or the disk) full."""
    gaps: tuple[Eviction, ...] = ()
    """Every recorded gap of this epoch (eviction, disk full, purge), oldest first."""
    file_bytes: int = 0
    oldest_pending_created: float | None = None
    """When the oldest pending row was committed (Unix time; None when nothing is pending)."""


_SUMMARY = sa.select(
    sa.func.count(),
    sa.func.coalesce(sa.func.sum(sa.func.length(outbox_table.c.body)), 0),
    sa.func.min(outbox_table.c.seq),
    sa.func.max(outbox_table.c.seq),
    sa.func.min(outbox_table.c.created),
)
_GAPS = sa.select(gaps_table.c.first_seq, gaps_table.c.last_seq, gaps_table.c.count,
                  gaps_table.c.reason).order_by(gaps_table.c.pk)


def stats(store: Store, alarm: Alarm) -> OutboxStats:
    """Pending count and bytes, first and last pending seq, last allocated seq, epoch,
    bounds, this process's eviction counters and the recorded gaps."""
    # Read before the query: a row committed meanwhile is then either counted as pending
    # or beyond `last_seq`, never "allocated but neither pending nor acknowledged".
    last_seq = store.last_seq
    with store.read_lock:
        store.check_open()
        assert store.read is not None
        try:
            with store.read.begin():
                count, size, first, last, oldest = store.read.execute(_SUMMARY).one()
                gaps = tuple(Eviction(int(a), int(b), int(n), str(r))
                             for a, b, n, r in store.read.execute(_GAPS))
        except SQLAlchemyError as error:
            raise OutboxError(f"outbox {store.path}: stats failed: {error}") from error
    path = store.path
    file_bytes = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")
                     if p.name in (path.name, path.name + "-wal"))
    bounds = alarm.bounds
    return OutboxStats(
        source=store.source,
        epoch=store.epoch,
        last_seq=last_seq,
        pending=int(count),
        pending_bytes=int(size),
        first_pending_seq=None if first is None else int(first),
        last_pending_seq=None if last is None else int(last),
        max_packets=bounds.max_packets,
        max_bytes=bounds.max_bytes,
        policy=bounds.policy,
        evicted_packets=alarm.evicted_packets,
        refused_appends=alarm.refused_appends,
        disk_full=alarm.disk_full,
        full=alarm.full,
        gaps=gaps,
        file_bytes=file_bytes,
        oldest_pending_created=None if oldest is None else float(oldest),
    )


def export(store: Store, after_seq: int = 0, chunk: int = 1000) -> Iterator[Row]:
    """Every pending row in seq order, `chunk` rows per read (memory stays flat)."""
    while True:
        rows = store.pending(after_seq, chunk)
        if not rows:
            return
        yield from rows
        after_seq = rows[-1].seq


def purge(room: Room, reason: str) -> list[Eviction]:
    """Delete every pending row except gap rows, recording (and appending) gap rows."""
    store = room.store
    with store.write_lock:
        store.check_open()
        evictions: list[Eviction] = []
        now = time.time()
        try:
            with transaction(store.raw):
                evicted, freed = evict(store.raw, MAX_SEQ, 0, reason, evictions)
                gap_rows, last = room.record(evictions, store.last_seq, now, set_last=True)
        except sqlite3.Error as error:
            raise OutboxError(f"outbox {store.path}: purge failed: {error}") from error
        store.last_seq = last
        store.pending_count += len(gap_rows) - evicted
        store.pending_bytes += sum(len(r.body) for r in gap_rows) - freed
        if evictions:
            log.warning("outbox purged: %d packets", evicted,
                        extra={"ranges": len(evictions), "reason": reason})
        return evictions
