"""The durable outbox: one SQLite file per gateway (= one packet source), via SQLAlchemy Core.

Rows are opaque bodies with a gap-free sequence number. The outbox knows rows, not packets: a
caller hands in entries whose `render(seq, epoch)` produces the body once the sequence is known,
so the identity is allocated inside the same transaction that stores it (ARCHITECTURE.md,
"Delivery guarantees" 1).

Bounds (guarantee 7): `Bounds(max_packets, max_bytes, policy)`. Under `refuse` an append that
would cross a bound raises `OutboxFull` and stores nothing; under `evict_low_priority` the oldest
rows of the lowest priority go first (telemetry before key events; gap records never), in the
same transaction as the append, and each evicted range of sequences becomes a gap row made by
the caller's `gap_entry` factory, so the loss is named to the hub. A full disk (`SQLITE_FULL`)
is handled the same way. A file that SQLite reports corrupt at open is moved aside and a new
epoch begins (never silently reused).

Threading: every method is blocking and may be called from any thread; the event loop reaches
the outbox through one dedicated thread (`edge_store.worker.OutboxWorker`). Writes share one
connection under one lock; reads (pending, stats) use a second connection under another lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from ulid import ULID

from edge_store import recovery

log = logging.getLogger(__name__)

Synchronous = Literal["FULL", "NORMAL"]
Policy = Literal["refuse", "evict_low_priority"]

# Gap rows outrank everything: they name what was lost and are never evicted themselves.
GAP_PRIORITY = 100

_metadata = sa.MetaData()

# One row: the source this file belongs to, its epoch, and the highest sequence ever allocated
# (kept here because the outbox table alone forgets it once every row is acknowledged).
meta_table = sa.Table(
    "outbox_meta",
    _metadata,
    sa.Column("singleton", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("epoch", sa.Text, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

# `seq INTEGER PRIMARY KEY` is SQLite's rowid: ordered reads and range deletes are b-tree walks.
outbox_table = sa.Table(
    "outbox",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    # The caller's label for the row (the packet type), for MQTT user properties and stats.
    sa.Column("kind", sa.Text, nullable=False, server_default=""),
)

# Every range of sequences that left the outbox without the hub's ack (eviction, disk full,
# purge): the durable record behind the gap rows, for `keyop outbox stats`.
gaps_table = sa.Table(
    "outbox_gaps",
    _metadata,
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

# The hot statements, as plain SQL on the DBAPI connection that SQLAlchemy opened (see `_open`).
_INSERT = "INSERT INTO outbox (seq, id, priority, created, body, kind) VALUES (?, ?, ?, ?, ?, ?)"
_PENDING = "SELECT seq, id, kind, body FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
_ACKED = "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox WHERE seq <= ?"
_DELETE_UPTO = "DELETE FROM outbox WHERE seq <= ?"
_DELETE_RANGE = "DELETE FROM outbox WHERE seq >= ? AND seq <= ?"
_CANDIDATES = (
    "SELECT seq, length(body) FROM outbox WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_SET_LAST = "UPDATE outbox_meta SET last_seq = ? WHERE singleton = 1"
_MAX_SEQ = 2**62


class OutboxError(Exception):
    """Base of the edge_store errors."""


class SourceMismatch(OutboxError):
    """The outbox file belongs to another source than the one opening it."""


class OutboxClosed(OutboxError):
    """The outbox (or its writer) is closed."""


class OutboxLocked(OutboxError):
    """Another process holds the outbox exclusively (a running gateway)."""


class OutboxFull(OutboxError):
    """A bound (or the disk) is full and the policy refuses new rows; nothing was stored."""


class RenderError(OutboxError):
    """An entry's `render` failed; nothing of that append was committed.

    `index` is the entry's position in the appended sequence, so a group committer can drop
    that one entry and commit the others.
    """

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"entry {index}: render failed: {cause!r}")
        self.index = index
        self.cause = cause


Render = Callable[[int, str], bytes]


class Entry(NamedTuple):
    """One row to append: `render(seq, epoch)` returns its body once the sequence is allocated.

    Immutable like the rows; a NamedTuple because one is made per packet, at about a quarter
    of a frozen dataclass's construction cost.
    """

    id: str
    render: Render
    # Higher outranks lower when a size bound forces eviction (key operations over telemetry).
    priority: int = 1
    # The caller's label (the packet type): kept beside the body so readers need not parse it.
    kind: str = ""


class Row(NamedTuple):
    """One stored row as readers get it."""

    seq: int
    id: str
    kind: str
    body: bytes


GapEntry = Callable[[int, int, str], Entry]
"""`gap_entry(first_seq, last_seq, reason)`: the row that names evicted sequences to the hub."""


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


@dataclass(frozen=True, slots=True)
class Eviction:
    """One range of sequences forced out of the outbox before the hub had it."""

    first: int
    last: int
    count: int
    reason: str


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
        self._synchronous = synchronous
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self.recovered_from: Path | None = None
        self.worker: Any = None
        """The `edge_store.worker.OutboxWorker` serving the event loop, once started."""
        self.evicted_packets = 0
        self.refused_appends = 0
        self.disk_full = 0
        self.full = False
        self._alarm_pending = 1
        self._lock_file: Any = None
        if exclusive:
            self._take_lock()
        try:
            try:
                self._open(source, check)
            except recovery.Corrupt as error:
                self.recovered_from = recovery.move_aside(self.path)
                log.error(
                    "outbox file is corrupt: moved aside, starting a new epoch; packets "
                    "pending in it did not reach the hub (they stay in the moved file)",
                    extra={"path": str(self.path), "moved_to": str(self.recovered_from),
                           "error": str(error)},
                )
                self._open(source, check=False)
        except BaseException:
            if self._lock_file is not None:
                self._lock_file.close()
            raise

    # --- opening -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        """One writer per file: two processes allocating sequences would collide. The lock is
        an flock on `NAME.lock`, which the kernel drops when the process dies (kill -9)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutboxLocked(
                f"outbox {self.path} is in use by another process (a running gateway?): "
                "stop it first"
            ) from None
        self._lock_file = handle

    def _open(self, source: str, check: bool) -> None:
        # check_same_thread=False: connections move between threads; the locks make sure only
        # one thread uses a connection at a time.
        self.engine = sa.create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False},
            poolclass=sa.pool.NullPool,
        )
        sa.event.listen(self.engine, "connect", self._on_connect)
        self._write: sa.Connection | None = None
        self._read: sa.Connection | None = None
        try:
            self._write = self.engine.connect()
            self._read = self.engine.connect()
            if check:
                recovery.check(self._write, self.path)
            self.source, self.epoch, self._last_seq = self._open_meta(source)
            self._pending_count, self._pending_bytes = self._count_pending()
            # The hot statements run on the DBAPI connection under SQLAlchemy's: per statement,
            # SQLAlchemy's execution machinery costs several times what SQLite does here
            # (FIELD-NOTES: raw executemany per tick, 24,200 packets/s against 18,300).
            raw = self._write.connection.driver_connection
            raw_read = self._read.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection) and isinstance(raw_read, sqlite3.Connection)
            self._raw: sqlite3.Connection = raw
            self._raw_read: sqlite3.Connection = raw_read
        except SQLAlchemyError as error:
            self._dispose()
            if recovery.is_corruption(error):
                raise recovery.Corrupt(str(error)) from error
            raise OutboxError(f"outbox {self.path}: cannot open: {error}") from error
        except BaseException:
            self._dispose()
            raise

    def _dispose(self) -> None:
        for conn in (self._write, self._read):
            if conn is not None:
                conn.close()
        self.engine.dispose()

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={self._synchronous}")
        # The reader and the writer are two connections: let one wait briefly for the other's
        # lock instead of failing with "database is locked".
        cursor.execute("PRAGMA busy_timeout=5000")
        if self.max_file_bytes is not None:
            page_size = int(cursor.execute("PRAGMA page_size").fetchone()[0])
            pages = max(8, self.max_file_bytes // page_size)
            # A hard cap on the file: past it SQLite answers SQLITE_FULL, as on a full disk.
            cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    def _open_meta(self, source: str) -> tuple[str, str, int]:
        assert self._write is not None
        with self._write_lock, self._write.begin():
            _metadata.create_all(self._write)
            columns = {r[1] for r in self._write.exec_driver_sql("PRAGMA table_info(outbox)")}
            if "kind" not in columns:  # a file from before the kind column
                self._write.exec_driver_sql(
                    "ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT ''"
                )
            row = self._write.execute(sa.select(meta_table)).first()
            if row is None:
                count = sa.select(sa.func.count()).select_from(outbox_table)
                if self._write.execute(count).scalar():
                    raise recovery.Corrupt("rows without a meta row")
                epoch = str(ULID())
                self._write.execute(
                    sa.insert(meta_table).values(
                        singleton=1, source=source, epoch=epoch, last_seq=0, created=time.time()
                    )
                )
                log.info(
                    "outbox created",
                    extra={"path": str(self.path), "source": source, "epoch": epoch},
                )
                return source, epoch, 0
            top = self._write.execute(sa.select(sa.func.max(outbox_table.c.seq))).scalar()
        if row.source != source:
            raise SourceMismatch(
                f"outbox {self.path} belongs to source {row.source!r}, "
                f"not {source!r}: use that source or another file"
            )
        return row.source, row.epoch, max(int(row.last_seq), int(top or 0))

    def _count_pending(self) -> tuple[int, int]:
        assert self._read is not None
        with self._read_lock, self._read.begin():
            count, size = self._read.exec_driver_sql(_ACKED, (_MAX_SEQ,)).one()
        return int(count), int(size)

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")

    @property
    def last_seq(self) -> int:
        """The highest sequence ever committed in this epoch (0 before the first append)."""
        return self._last_seq

    @property
    def pending_count(self) -> int:
        """Rows stored and not yet acknowledged (kept in memory, exact)."""
        return self._pending_count

    # --- writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Commit `entries` in one transaction and return their sequences (consecutive).

        All or nothing: on `RenderError`, `OutboxFull` or a failed commit nothing is stored and
        no sequence is consumed, so sequences stay gap-free. Gap rows that an eviction adds
        come after the entries' sequences.
        """
        return [row.seq for row in self.commit(entries).rows]

    def commit(self, entries: Sequence[Entry], ack_upto: int = 0) -> Commit:
        """One transaction: delete acknowledged rows up to `ack_upto` (0: none), then append.

        Returns the stored rows (with their bodies, so the uplink need not read them back),
        any gap rows and evictions. A failed ack delete fails the whole transaction.
        """
        with self._write_lock:
            self._check_open()
            try:
                return self._commit(entries, ack_upto)
            except OutboxFull:
                if ack_upto <= 0 or not entries:
                    raise
            # The refusal rolled the acknowledged deletes back with it: those must happen
            # anyway (they are what makes room), so delete alone, then try the append again.
            deleted = self._commit([], ack_upto).deleted
            result = self._commit(entries, 0)
            result.deleted = deleted
            return result

    def _commit(self, entries: Sequence[Entry], ack_upto: int) -> Commit:
        first = self._last_seq + 1
        now = time.time()
        rows = self._render(entries, first)
        prios = [entry.priority for entry in entries]
        new_bytes = sum(len(row.body) for row in rows)
        try:
            return self._transaction(rows, prios, new_bytes, ack_upto, now, disk_full=False)
        except OutboxFull:
            self.refused_appends += 1
            self._alarm(True, "refused")
            raise
        except _DiskFull:
            self.disk_full += 1
            if self.bounds.policy == "refuse" or not rows:
                self.refused_appends += 1
                self._alarm(True, "disk full")
                raise OutboxFull(
                    f"outbox {self.path}: disk full (SQLITE_FULL); policy {self.bounds.policy}"
                ) from None
        # Disk full under evict_low_priority: make room by evicting, then try once more.
        try:
            return self._transaction(rows, prios, new_bytes, ack_upto, now, disk_full=True)
        except _DiskFull:
            self.refused_appends += 1
            self._alarm(True, "disk full")
            raise OutboxFull(
                f"outbox {self.path}: disk full (SQLITE_FULL) even after evicting"
            ) from None

    def _render(self, entries: Sequence[Entry], first: int) -> list[Row]:
        rows = []
        epoch = self.epoch
        for index, entry in enumerate(entries):
            seq = first + index
            try:
                body = entry.render(seq, epoch)
            except (TypeError, ValueError, KeyError) as error:
                # A render is the caller's code (JSON of mapping output): the usual ways it
                # fails are these; anything else is a bug and propagates as it is.
                raise RenderError(index, error) from error
            if not isinstance(body, bytes):
                raise RenderError(index, TypeError(f"render returned {type(body).__name__}"))
            rows.append(Row(seq, entry.id, entry.kind, body))
        return rows

    def _transaction(
        self, rows: list[Row], prios: list[int], new_bytes: int, ack_upto: int, now: float,
        *, disk_full: bool,
    ) -> Commit:
        conn = self._raw
        result = Commit(rows=rows)
        count, size = self._pending_count, self._pending_bytes
        deleting = False
        try:
            with _transaction(conn):
                if ack_upto > 0:
                    gone, gone_bytes = conn.execute(_ACKED, (ack_upto,)).fetchone()
                    if gone:
                        conn.execute(_DELETE_UPTO, (ack_upto,))
                        deleting = True
                    result.deleted = int(gone)
                    count -= int(gone)
                    size -= int(gone_bytes)
                need_rows, need_bytes = self._excess(count + len(rows), size + new_bytes)
                if (need_rows or need_bytes) and self.bounds.policy == "refuse" and not disk_full:
                    raise OutboxFull(
                        f"outbox {self.path}: full ({count} packets, {size} bytes pending; "
                        f"bounds {self.bounds.max_packets} packets, "
                        f"{self.bounds.max_bytes} bytes); policy refuse"
                    )
                params = [(r.seq, r.id, p, now, r.body, r.kind)
                          for r, p in zip(rows, prios, strict=True)]
                if disk_full:
                    # No bound says how much: free a slice of the backlog, at least twice the
                    # batch, before inserting (the insert is what did not fit).
                    need = max(need_rows, 2 * len(rows), count // 50, 64)
                    count, size = self._evict_until(conn, need, 0, "disk full", now, result,
                                                    count, size, len(rows), new_bytes)
                    if params:
                        conn.executemany(_INSERT, params)
                else:
                    # Insert first, then evict: the new rows are the newest of their priority,
                    # so they go only after every older one (a batch larger than the bound
                    # still fits, its oldest telemetry named by a gap record).
                    if params:
                        conn.executemany(_INSERT, params)
                    if need_rows or need_bytes:
                        count, size = self._evict_until(conn, need_rows, need_bytes,
                                                        "outbox bound", now, result, count,
                                                        size, len(rows), new_bytes)
                if result.evictions:
                    self._record_gaps(conn, result.evictions, now)
                last = rows[-1].seq if rows else self._last_seq
                if result.evictions and self.gap_entry is not None:
                    gap_entries = [
                        self.gap_entry(e.first, e.last, e.reason) for e in result.evictions
                    ]
                    result.gap_rows = self._render(gap_entries, last + 1)
                    last = result.gap_rows[-1].seq
                    conn.executemany(_INSERT, [(r.seq, r.id, GAP_PRIORITY, now, r.body, r.kind)
                                               for r in result.gap_rows])
                if deleting or result.evictions:
                    # The meta row keeps last_seq for when every row is gone; while rows are
                    # there, max(seq) says it (see `_open_meta`), so appends skip this update.
                    conn.execute(_SET_LAST, (last,))
        except sqlite3.Error as error:
            if _is_full(error):
                raise _DiskFull() from error
            # The transaction rolled back; the in-memory counters were never advanced.
            raise OutboxError(
                f"outbox {self.path}: commit of {len(rows)} rows failed: {error}"
            ) from error
        self._last_seq = last
        self._pending_count = count + len(rows) + len(result.gap_rows)
        self._pending_bytes = (
            size + new_bytes + sum(len(r.body) for r in result.gap_rows)
        )
        if result.evictions:
            self._log_evictions(result.evictions)
        elif self.full and rows and self._pending_count < 0.9 * self._alarm_pending:
            self._alarm(False, "")
        return result

    def _evict_until(
        self, conn: sqlite3.Connection, need_rows: int, need_bytes: int, reason: str,
        now: float, result: Commit, count: int, size: int, new_rows: int, new_bytes: int,
    ) -> tuple[int, int]:
        """Evict until `need_*` are met and the gap rows to come fit too; return the pending
        count and bytes before the new rows (which may themselves have been evicted)."""
        rounds = 0
        while need_rows or need_bytes:
            evicted_rows, evicted_bytes = self._evict(
                conn, need_rows, need_bytes, reason, now, result
            )
            count -= evicted_rows
            size -= evicted_bytes
            rounds += 1
            if evicted_rows == 0 or rounds > 10:
                raise OutboxFull(
                    f"outbox {self.path}: full and nothing evictable is left "
                    f"({count + new_rows} packets pending)"
                )
            # The gap rows count against the bounds too (about 500 bytes each).
            gaps = len(result.evictions) if self.gap_entry is not None else 0
            need_rows, need_bytes = self._excess(
                count + new_rows + gaps, size + new_bytes + 500 * gaps, pad=False
            )
            if need_rows:
                need_rows += 4  # the next round may add a gap row of its own
        return count, size

    def _excess(self, count: int, size: int, *, pad: bool = True) -> tuple[int, int]:
        """Rows and bytes over the bounds if `count` rows of `size` bytes were pending
        (`pad`: rounded up to a slice of the bound)."""
        bounds = self.bounds
        rows = max(0, count - bounds.max_packets) if bounds.max_packets else 0
        size_over = max(0, size - bounds.max_bytes) if bounds.max_bytes else 0
        if pad and (rows or size_over):
            # Evict a slice, not one row per append: fewer, larger gaps and fewer rounds.
            if bounds.max_packets:
                rows = max(rows, bounds.max_packets // 10, 1) if rows else 0
            if bounds.max_bytes and size_over:
                size_over = max(size_over, bounds.max_bytes // 10)
        return rows, size_over

    def _evict(
        self, conn: sqlite3.Connection, need_rows: int, need_bytes: int, reason: str, now: float,
        result: Commit,
    ) -> tuple[int, int]:
        """Delete the oldest rows of the lowest priority until `need_*` are freed."""
        chosen: list[int] = []
        freed = 0
        levels = [
            int(p) for (p,) in conn.execute(
                "SELECT DISTINCT priority FROM outbox WHERE priority < ? ORDER BY priority",
                (GAP_PRIORITY,),
            )
        ]
        for level in levels:
            after = 0
            while len(chosen) < need_rows or freed < need_bytes:
                page = conn.execute(_CANDIDATES, (level, after, 1000)).fetchall()
                for seq, length in page:
                    chosen.append(int(seq))
                    freed += int(length)
                    if len(chosen) >= need_rows and freed >= need_bytes:
                        break
                if len(page) < 1000:
                    break
                after = int(page[-1][0])
            if len(chosen) >= need_rows and freed >= need_bytes:
                break
        if not chosen:
            return 0, 0
        ranges = _ranges(sorted(chosen))
        conn.executemany(_DELETE_RANGE, ranges)
        for a, b in ranges:
            last = result.evictions[-1] if result.evictions else None
            if last is not None and last.last + 1 == a and last.reason == reason:
                result.evictions[-1] = Eviction(last.first, b, last.count + b - a + 1, reason)
            else:
                result.evictions.append(Eviction(a, b, b - a + 1, reason))
        return len(chosen), freed

    @staticmethod
    def _record_gaps(conn: sqlite3.Connection, evictions: list[Eviction], now: float) -> None:
        conn.executemany(
            "INSERT INTO outbox_gaps (first_seq, last_seq, count, reason, at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(e.first, e.last, e.count, e.reason, now) for e in evictions],
        )

    def _log_evictions(self, evictions: list[Eviction]) -> None:
        total = sum(e.count for e in evictions)
        self.evicted_packets += total
        self._alarm(True, "evicting")
        log.warning(
            "outbox full: evicted %d packets in %d range(s), %s; gap records sent to the hub",
            total, len(evictions), ", ".join(f"{e.first}..{e.last}" for e in evictions[:5]),
            extra={"evicted": total, "reason": evictions[0].reason,
                   "policy": self.bounds.policy, "evicted_total": self.evicted_packets},
        )

    def _alarm(self, on: bool, what: str) -> None:
        """Log the alarm's transitions only (STYLE: transitions, not repetitions)."""
        if on:
            self._alarm_pending = max(1, self._pending_count)
        if on and not self.full:
            log.error(
                "ALARM outbox full (%s): policy %s", what, self.bounds.policy,
                extra={"path": str(self.path), "pending": self._pending_count,
                       "pending_bytes": self._pending_bytes,
                       "max_packets": self.bounds.max_packets,
                       "max_bytes": self.bounds.max_bytes},
            )
        elif not on and self.full:
            log.info("outbox alarm cleared: appends fit again",
                     extra={"pending": self._pending_count})
        self.full = on

    def ack(self, upto_seq: int) -> int:
        """Delete every row with seq <= `upto_seq` in one transaction; return how many went.

        Idempotent: acknowledging the same or a lower sequence again deletes nothing.
        """
        return self.commit([], ack_upto=upto_seq).deleted

    def purge(self, reason: str = "purged by operator") -> list[Eviction]:
        """Delete every pending row except gap rows, recording (and appending) gap rows."""
        with self._write_lock:
            self._check_open()
            result = Commit()
            conn = self._raw
            now = time.time()
            try:
                with _transaction(conn):
                    evicted, freed = self._evict(conn, _MAX_SEQ, 0, reason, now, result)
                    self._record_gaps(conn, result.evictions, now)
                    last = self._last_seq
                    if result.evictions and self.gap_entry is not None:
                        entries = [self.gap_entry(e.first, e.last, e.reason)
                                   for e in result.evictions]
                        result.gap_rows = self._render(entries, last + 1)
                        conn.executemany(_INSERT, [
                            (r.seq, r.id, GAP_PRIORITY, now, r.body, r.kind)
                            for r in result.gap_rows])
                        last = result.gap_rows[-1].seq
                    conn.execute(_SET_LAST, (last,))
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {self.path}: purge failed: {error}") from error
            self._last_seq = last
            self._pending_count += len(result.gap_rows) - evicted
            self._pending_bytes += sum(len(r.body) for r in result.gap_rows) - freed
            if result.evictions:
                log.warning("outbox purged: %d packets", evicted,
                            extra={"ranges": len(result.evictions), "reason": reason})
            return result.evictions

    # --- reading -------------------------------------------------------------------------------

    def pending(self, after_seq: int, limit: int, upto_seq: int = _MAX_SEQ) -> list[Row]:
        """Up to `limit` pending rows with `after_seq` < seq <= `upto_seq`, in seq order."""
        with self._read_lock:
            self._check_open()
            assert self._read is not None
            try:
                result = self._raw_read.execute(_PENDING, (after_seq, upto_seq, limit))
                return [Row(s, i, k, b) for s, i, k, b in result]
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {self.path}: pending read failed: {error}") from error

    def stats(self) -> OutboxStats:
        """Pending count and bytes, first and last pending seq, last allocated seq, epoch,
        bounds, this process's eviction counters and the recorded gaps."""
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.func.length(outbox_table.c.body)), 0),
            sa.func.min(outbox_table.c.seq),
            sa.func.max(outbox_table.c.seq),
        )
        # Read before the query: a row committed meanwhile is then either counted as pending
        # or beyond `last_seq`, never "allocated but neither pending nor acknowledged".
        last_seq = self._last_seq
        with self._read_lock:
            self._check_open()
            assert self._read is not None
            try:
                with self._read.begin():
                    count, size, first, last = self._read.execute(query).one()
                    gaps = tuple(
                        Eviction(int(a), int(b), int(n), str(r))
                        for a, b, n, r in self._read.execute(
                            sa.select(gaps_table.c.first_seq, gaps_table.c.last_seq,
                                      gaps_table.c.count, gaps_table.c.reason)
                            .order_by(gaps_table.c.pk)
                        )
                    )
            except SQLAlchemyError as error:
                raise OutboxError(f"outbox {self.path}: stats failed: {error}") from error
        file_bytes = sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")
            if p.name in (self.path.name, self.path.name + "-wal")
        )
        return OutboxStats(
            source=self.source,
            epoch=self.epoch,
            last_seq=last_seq,
            pending=int(count),
            pending_bytes=int(size),
            first_pending_seq=None if first is None else int(first),
            last_pending_seq=None if last is None else int(last),
            max_packets=self.bounds.max_packets,
            max_bytes=self.bounds.max_bytes,
            policy=self.bounds.policy,
            evicted_packets=self.evicted_packets,
            refused_appends=self.refused_appends,
            disk_full=self.disk_full,
            full=self.full,
            gaps=gaps,
            file_bytes=file_bytes,
        )

    def export(self, after_seq: int = 0, chunk: int = 1000) -> Any:
        """Yield every pending row in seq order, `chunk` rows per read (memory stays flat)."""
        while True:
            rows = self.pending(after_seq, chunk)
            if not rows:
                return
            yield from rows
            after_seq = rows[-1].seq

    def close(self) -> None:
        """Close both connections; later calls raise `OutboxClosed`. Safe to call twice."""
        if self.worker is not None:
            self.worker.stop()  # finishes its queued work first
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._dispose()
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _DiskFull(Exception):
    """SQLITE_FULL inside a transaction (rolled back)."""


def _is_full(error: sqlite3.Error) -> bool:
    return error.sqlite_errorcode == sqlite3.SQLITE_FULL


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT on the DBAPI connection; ROLLBACK on any error."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers: [1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges
