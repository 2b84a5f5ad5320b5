"""The outbox's bounds (guarantee 7): the policy, what is evicted first, and the gap records.

`Bounds(max_packets, max_bytes, policy)`. Under `refuse` an append that would cross a bound
raises `OutboxFull` and stores nothing; under `evict_low_priority` the oldest rows of the
lowest priority go first (telemetry before key events; gap records never), in the same
transaction as the append, and each evicted range of sequences becomes a gap row made by the
caller's `gap_entry` factory, so the loss is named to the hub. A full disk (`SQLITE_FULL`) is
handled the same way. Every evicted range is also recorded in `outbox_gaps`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge_store.errors import OutboxError, OutboxFull
from edge_store.store import SET_LAST, Entry, Row, Store, insert

# The outbox's one logger, whichever of its modules logs.
log = logging.getLogger("edge_store.outbox")

Policy = Literal["refuse", "evict_low_priority"]

# Gap rows outrank everything: they name what was lost and are never evicted themselves.
GAP_PRIORITY = 100

GapEntry = Callable[[int, int, str], Entry]
"""`gap_entry(first_seq, last_seq, reason)`: the row that names evicted sequences to the hub."""

_LEVELS = "SELECT DISTINCT priority FROM outbox WHERE priority < ? ORDER BY priority"
_CANDIDATES = (
    "SELECT seq, length(body) FROM outbox WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_PAGE = 1000
_DELETE_RANGE = "DELETE FROM outbox WHERE seq >= ? AND seq <= ?"
_RECORD_GAP = ("INSERT INTO outbox_gaps (first_seq, last_seq, count, reason, at) "
               "VALUES (?, ?, ?, ?, ?)")
# What a gap row is counted as against `max_bytes` before it is rendered.
_GAP_ROW_BYTES = 500


@dataclass(frozen=True, slots=True)
class Bounds:
    """Size bounds of the outbox and what happens when an append would cross one."""

    max_packets: int | None = None
    max_bytes: int | None = None
    """Bytes of pending bodies (the file itself is larger: pages, index, WAL)."""
    policy: Policy = "refuse"

    def __post_init__(self) -> None:
        if self.policy not in ("refuse", "evict_low_priority"):
            raise OutboxError(
                f"policy has value {self.policy!r}: expected 'refuse' or 'evict_low_priority'"
            )
        for name in ("max_packets", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OutboxError(f"{name} has value {value}: expected >= 1 or none")

    def excess(self, count: int, size: int, *, pad: bool = True) -> tuple[int, int]:
        """Rows and bytes over the bounds if `count` rows of `size` bytes were pending
        (`pad`: rounded up to a slice of the bound)."""
        rows = max(0, count - self.max_packets) if self.max_packets else 0
        size_over = max(0, size - self.max_bytes) if self.max_bytes else 0
        if pad and (rows or size_over):
            # Evict a slice, not one row per append: fewer, larger gaps and fewer rounds.
            if self.max_packets:
                rows = max(rows, self.max_packets // 10, 1) if rows else 0
            if self.max_bytes and size_over:
                size_over = max(size_over, self.max_bytes // 10)
        return rows, size_over


@dataclass(frozen=True, slots=True)
class Eviction:
    """One range of sequences forced out of the outbox before the hub had it."""

    first: int
    last: int
    count: int
    reason: str


@dataclass(slots=True)
class Tally:
    """Pending rows and bytes inside a transaction, not counting the rows it adds."""

    count: int
    size: int


def evict(conn: sqlite3.Connection, need_rows: int, need_bytes: int, reason: str,
          evictions: list[Eviction]) -> tuple[int, int]:
    """Delete the oldest rows of the lowest priority until `need_*` are freed; add the ranges
    to `evictions`; return the rows and bytes freed."""
    chosen: list[int] = []
    freed = 0
    for (level,) in conn.execute(_LEVELS, (GAP_PRIORITY,)).fetchall():
        freed += _choose(conn, int(level), need_rows, need_bytes - freed, chosen)
        if len(chosen) >= need_rows and freed >= need_bytes:
            break
    if not chosen:
        return 0, 0
    ranges = _ranges(sorted(chosen))
    conn.executemany(_DELETE_RANGE, ranges)
    for first, last in ranges:
        _add_range(evictions, first, last, reason)
    return len(chosen), freed


def _choose(conn: sqlite3.Connection, level: int, need_rows: int, need_bytes: int,
            chosen: list[int]) -> int:
    """Add the oldest rows of priority `level` to `chosen` until `chosen` holds `need_rows`
    and `need_bytes` more are freed; return the bytes freed."""
    freed = 0
    after = 0
    while len(chosen) < need_rows or freed < need_bytes:
        page = conn.execute(_CANDIDATES, (level, after, _PAGE)).fetchall()
        for seq, length in page:
            chosen.append(int(seq))
            freed += int(length)
            if len(chosen) >= need_rows and freed >= need_bytes:
                return freed
        if len(page) < _PAGE:
            return freed
        after = int(page[-1][0])
    return freed


def _add_range(evictions: list[Eviction], first: int, last: int, reason: str) -> None:
    """Append a range, merged into the previous one when it continues it for the same reason."""
    previous = evictions[-1] if evictions else None
    if previous is not None and previous.last + 1 == first and previous.reason == reason:
        evictions[-1] = Eviction(previous.first, last, previous.count + last - first + 1, reason)
    else:
        evictions.append(Eviction(first, last, last - first + 1, reason))


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers: [1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


class Room:
    """Applies the bounds inside a transaction: insert the new rows, evicting to make room."""

    def __init__(self, store: Store, bounds: Bounds, gap_entry: GapEntry | None) -> None:
        self.store = store
        self.bounds = bounds
        self.gap_entry = gap_entry

    def insert(self, rows: list[Row], priorities: list[int], new_bytes: int, now: float,
               tally: Tally, evictions: list[Eviction], *, disk_full: bool) -> None:
        """Insert `rows` within the bounds; `disk_full`: the last try met SQLITE_FULL."""
        conn = self.store.raw
        need_rows, need_bytes = self.bounds.excess(tally.count + len(rows), tally.size + new_bytes)
        if disk_full:
            # No bound says how much: free a slice of the backlog, at least twice the batch,
            # before inserting (the insert is what did not fit).
            need = max(need_rows, 2 * len(rows), tally.count // 50, 64)
            self._evict_until(need, 0, "disk full", tally, evictions, len(rows), new_bytes)
            insert(conn, rows, priorities, now)
            return
        if (need_rows or need_bytes) and self.bounds.policy == "refuse":
            raise OutboxFull(
                f"outbox {self.store.path}: full ({tally.count} packets, {tally.size} bytes "
                f"pending; bounds {self.bounds.max_packets} packets, "
                f"{self.bounds.max_bytes} bytes); policy refuse"
            )
        # Insert first, then evict: the new rows are the newest of their priority, so they go
        # only after every older one (a batch larger than the bound still fits, its oldest
        # telemetry named by a gap record).
        insert(conn, rows, priorities, now)
        if need_rows or need_bytes:
            self._evict_until(need_rows, need_bytes, "outbox bound", tally, evictions,
                              len(rows), new_bytes)

    def _evict_until(self, need_rows: int, need_bytes: int, reason: str, tally: Tally,
                     evictions: list[Eviction], new_rows: int, new_bytes: int) -> None:
        """Evict until `need_*` are met and the gap rows to come fit too; `tally` loses what
        went (the new rows may themselves have been evicted)."""
        rounds = 0
        while need_rows or need_bytes:
            evicted_rows, evicted_bytes = evict(self.store.raw, need_rows, need_bytes, reason,
                                                evictions)
            tally.count -= evicted_rows
            tally.size -= evicted_bytes
            rounds += 1
            if evicted_rows == 0 or rounds > 10:
                raise OutboxFull(
                    f"outbox {self.store.path}: full and nothing evictable is left "
                    f"({tally.count + new_rows} packets pending)"
                )
            # The gap rows count against the bounds too.
            gaps = len(evictions) if self.gap_entry is not None else 0
            need_rows, need_bytes = self.bounds.excess(
                tally.count + new_rows + gaps, tally.size + new_bytes + _GAP_ROW_BYTES * gaps,
                pad=False,
            )
            if need_rows:
                need_rows += 4  # the next round may add a gap row of its own

    def record(self, evictions: list[Eviction], last: int, now: float,
               set_last: bool) -> tuple[list[Row], int]:
        """Record `evictions` in `outbox_gaps` and append their gap rows after `last`; keep
        the meta row's last_seq when `set_last` or anything was evicted. Return the gap rows
        and the new last sequence."""
        conn = self.store.raw
        gap_rows: list[Row] = []
        if evictions:
            conn.executemany(_RECORD_GAP, [(e.first, e.last, e.count, e.reason, now)
                                           for e in evictions])
            if self.gap_entry is not None:
                entries = [self.gap_entry(e.first, e.last, e.reason) for e in evictions]
                gap_rows = self.store.render(entries, last + 1)
                insert(conn, gap_rows, [GAP_PRIORITY] * len(gap_rows), now)
                last = gap_rows[-1].seq
        if set_last or evictions:
            # The meta row keeps last_seq for when every row is gone; while rows are there,
            # max(seq) says it (see `Store`), so plain appends skip this update.
            conn.execute(SET_LAST, (last,))
        return gap_rows, last
