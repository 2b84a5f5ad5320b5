"""The outbox's file: schema, opening (meta row, epoch), rendering, inserts and pending reads.

One SQLite file per source, opened through SQLAlchemy Core. The hot statements (insert, pending
read, ack delete) run as plain SQL on the DBAPI connections that SQLAlchemy opened: per
statement, SQLAlchemy's execution machinery costs several times what SQLite does here.

Writes share one connection under `write_lock`; reads use a second connection under
`read_lock`. The in-memory `last_seq`, `pending_count` and `pending_bytes` are exact: whoever
commits under `write_lock` advances them after the commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from ulid import ULID

from edge_store import recovery
from edge_store.errors import OutboxClosed, OutboxError, RenderError, SourceMismatch

# The outbox's one logger, whichever of its modules logs.
log = logging.getLogger("edge_store.outbox")

Synchronous = Literal["FULL", "NORMAL"]

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

# One row: the mapping engine's state as of the latest commit that carried one, written in
# that commit's transaction, so the packets and the state that produced them go together.
engine_state_table = sa.Table(
    "engine_state",
    _metadata,
    sa.Column("singleton", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

INSERT = "INSERT INTO outbox (seq, id, priority, created, body, kind) VALUES (?, ?, ?, ?, ?, ?)"
PENDING = "SELECT seq, id, kind, body FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
ACKED = "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox WHERE seq <= ?"
DELETE_UPTO = "DELETE FROM outbox WHERE seq <= ?"
SET_LAST = "UPDATE outbox_meta SET last_seq = ? WHERE singleton = 1"
SET_STATE = ("INSERT INTO engine_state (singleton, body, at) VALUES (1, ?, ?) "
             "ON CONFLICT (singleton) DO UPDATE SET body = excluded.body, at = excluded.at")
GET_STATE = "SELECT body, at FROM engine_state WHERE singleton = 1"
MAX_SEQ = 2**62

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


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT on the DBAPI connection; ROLLBACK on any error."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def is_full(error: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or `max_page_count`) has no room left."""
    return error.sqlite_errorcode == sqlite3.SQLITE_FULL


def insert(conn: sqlite3.Connection, rows: Sequence[Row], priorities: Sequence[int],
           now: float) -> None:
    """Insert `rows`, each with its priority, created `now` (inside the caller's transaction)."""
    if rows:
        conn.executemany(INSERT, [(r.seq, r.id, p, now, r.body, r.kind)
                                  for r, p in zip(rows, priorities, strict=True)])


class Store:
    """One open outbox file: its connections, its identity and its in-memory counters.

    Opening a missing file creates it with a new epoch (a ULID); an existing file keeps its
    epoch and continues its sequence; a file of another source raises `SourceMismatch`; a
    damaged one raises `recovery.Corrupt` (the caller decides what to do with it).
    """

    def __init__(self, path: Path, source: str, *, synchronous: Synchronous,
                 max_file_bytes: int | None, check: bool) -> None:
        self.path = path
        self.write_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.closed = False
        self._synchronous = synchronous
        self._max_file_bytes = max_file_bytes
        # Created 0600 before SQLite opens it (packets hold restricted params); SQLite gives
        # the -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600))
        # check_same_thread=False: connections move between threads; the locks make sure only
        # one thread uses a connection at a time.
        self.engine = sa.create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False},
            poolclass=sa.pool.NullPool,
        )
        sa.event.listen(self.engine, "connect", self._on_connect)
        self.write: sa.Connection | None = None
        self.read: sa.Connection | None = None
        try:
            self._open(source, check)
        except SQLAlchemyError as error:
            self.dispose()
            if recovery.is_corruption(error):
                raise recovery.Corrupt(str(error)) from error
            raise OutboxError(f"outbox {self.path}: cannot open: {error}") from error
        except BaseException:
            self.dispose()
            raise

    def _open(self, source: str, check: bool) -> None:
        self.write = self.engine.connect()
        self.read = self.engine.connect()
        if check:
            recovery.check(self.write, self.path)
        self.source, self.epoch, self.last_seq = self._open_meta(self.write, source)
        self.pending_count, self.pending_bytes = self._count_pending(self.read)
        raw = self.write.connection.driver_connection
        raw_read = self.read.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection) and isinstance(raw_read, sqlite3.Connection)
        self.raw: sqlite3.Connection = raw
        self.raw_read: sqlite3.Connection = raw_read

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={self._synchronous}")
        # The reader and the writer are two connections: let one wait briefly for the other's
        # lock instead of failing with "database is locked".
        cursor.execute("PRAGMA busy_timeout=5000")
        if self._max_file_bytes is not None:
            page_size = int(cursor.execute("PRAGMA page_size").fetchone()[0])
            pages = max(8, self._max_file_bytes // page_size)
            # A hard cap on the file: past it SQLite answers SQLITE_FULL, as on a full disk.
            cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    def _open_meta(self, conn: sa.Connection, source: str) -> tuple[str, str, int]:
        with self.write_lock, conn.begin():
            _metadata.create_all(conn)
            columns = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(outbox)")}
            if "kind" not in columns:  # a file from before the kind column
                conn.exec_driver_sql("ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT ''")
            row = conn.execute(sa.select(meta_table)).first()
            if row is None:
                return source, self._create_meta(conn, source), 0
            top = conn.execute(sa.select(sa.func.max(outbox_table.c.seq))).scalar()
        if row.source != source:
            raise SourceMismatch(
                f"outbox {self.path} belongs to source {row.source!r}, "
                f"not {source!r}: use that source or another file"
            )
        return row.source, row.epoch, max(int(row.last_seq), int(top or 0))

    def _create_meta(self, conn: sa.Connection, source: str) -> str:
        """The meta row of a new file; return its new epoch."""
        count = sa.select(sa.func.count()).select_from(outbox_table)
        if conn.execute(count).scalar():
            raise recovery.Corrupt("rows without a meta row")
        epoch = str(ULID())
        conn.execute(sa.insert(meta_table).values(
            singleton=1, source=source, epoch=epoch, last_seq=0, created=time.time()))
        log.info("outbox created",
                 extra={"path": str(self.path), "source": source, "epoch": epoch})
        return epoch

    def _count_pending(self, conn: sa.Connection) -> tuple[int, int]:
        with self.read_lock, conn.begin():
            count, size = conn.exec_driver_sql(ACKED, (MAX_SEQ,)).one()
        return int(count), int(size)

    def render(self, entries: Sequence[Entry], first: int) -> list[Row]:
        """The rows of `entries` with consecutive sequences from `first` (`RenderError` names
        the entry whose render failed)."""
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

    def pending(self, after_seq: int, limit: int, upto_seq: int = MAX_SEQ) -> list[Row]:
        """Up to `limit` pending rows with `after_seq` < seq <= `upto_seq`, in seq order."""
        with self.read_lock:
            self.check_open()
            try:
                result = self.raw_read.execute(PENDING, (after_seq, upto_seq, limit))
                return [Row(s, i, k, b) for s, i, k, b in result]
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {self.path}: pending read failed: {error}") from error

    def engine_state(self) -> tuple[bytes, float] | None:
        """The engine state of the latest commit that carried one, and when it was written."""
        with self.read_lock:
            self.check_open()
            try:
                row = self.raw_read.execute(GET_STATE).fetchone()
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {self.path}: engine state read failed: {error}"
                                  ) from error
        return None if row is None else (bytes(row[0]), float(row[1]))

    def check_open(self) -> None:
        if self.closed:
            raise OutboxClosed(f"outbox {self.path} is closed")

    def close(self) -> None:
        """Close both connections (waiting for any write or read in progress); idempotent."""
        with self.write_lock, self.read_lock:
            if not self.closed:
                self.closed = True
                self.dispose()

    def dispose(self) -> None:
        for conn in (self.write, self.read):
            if conn is not None:
                conn.close()
        self.engine.dispose()
