"""The durable outbox: one SQLite file per gateway (= one packet source), via SQLAlchemy Core.

Rows are opaque bodies with a gap-free sequence number. The outbox knows rows, not packets: a
caller hands in entries whose `render(seq, epoch)` produces the body once the sequence is known,
so the identity is allocated inside the same transaction that stores it (ARCHITECTURE.md,
"Delivery guarantees" 1).

Threading: every method is blocking and may be called from any thread (the async writer and the
uplink call it from worker threads). Writes (append, ack) share one connection under one lock;
reads (pending, stats) use a second connection under another lock, so a slow fsync of a group
commit does not hold up the uplink's reads (WAL lets readers run beside the writer).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from ulid import ULID

log = logging.getLogger(__name__)

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
)


class OutboxError(Exception):
    """Base of the edge_store errors."""


class SourceMismatch(OutboxError):
    """The outbox file belongs to another source than the one opening it."""


class OutboxClosed(OutboxError):
    """The outbox (or its writer) is closed."""


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


@dataclass(frozen=True, slots=True)
class Entry:
    """One row to append: `render(seq, epoch)` returns its body once the sequence is allocated."""

    id: str
    render: Render
    # Higher outranks lower when a size bound forces eviction (key operations over telemetry).
    priority: int = 1


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


class Outbox:
    """The durable outbox of one source.

    Opening a missing file creates it with a new epoch (a ULID); opening an existing file keeps
    its epoch and continues its sequence. Opening a file of another source raises
    `SourceMismatch`.
    """

    def __init__(
        self, path: str | Path, source: str, *, synchronous: Synchronous = "FULL"
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise OutboxError(
                f"synchronous has value {synchronous!r}: expected 'FULL' or 'NORMAL'"
            )
        self.path = Path(path)
        self._synchronous = synchronous
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        # check_same_thread=False: connections move between worker threads; the locks above
        # make sure only one thread uses a connection at a time.
        self.engine = sa.create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False},
            poolclass=sa.pool.NullPool,
        )
        sa.event.listen(self.engine, "connect", self._on_connect)
        try:
            self._write = self.engine.connect()
            self._read = self.engine.connect()
            self.source, self.epoch, self._last_seq = self._open_meta(source)
        except SQLAlchemyError as error:
            self.engine.dispose()
            raise OutboxError(f"outbox {self.path}: cannot open: {error}") from error
        except OutboxError:
            self._write.close()
            self._read.close()
            self.engine.dispose()
            raise

    def _on_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={self._synchronous}")
        # The reader and the writer are two connections: let one wait briefly for the other's
        # lock instead of failing with "database is locked".
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    def _open_meta(self, source: str) -> tuple[str, str, int]:
        with self._write_lock, self._write.begin():
            _metadata.create_all(self._write)
            row = self._write.execute(sa.select(meta_table)).first()
            if row is None:
                count = sa.select(sa.func.count()).select_from(outbox_table)
                if self._write.execute(count).scalar():
                    raise OutboxError(f"outbox {self.path}: rows without a meta row (damaged file)")
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
        if row.source != source:
            raise SourceMismatch(
                f"outbox {self.path} belongs to source {row.source!r}, "
                f"not {source!r}: use that source or another file"
            )
        return row.source, row.epoch, int(row.last_seq)

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")

    @property
    def last_seq(self) -> int:
        """The highest sequence ever committed in this epoch (0 before the first append)."""
        return self._last_seq

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Commit `entries` in one transaction and return their sequences (consecutive).

        All or nothing: on `RenderError` or a failed commit nothing is stored and no sequence is
        consumed, so sequences stay gap-free.
        """
        if not entries:
            return []
        with self._write_lock:
            self._check_open()
            first = self._last_seq + 1
            now = time.time()
            rows = []
            for index, entry in enumerate(entries):
                seq = first + index
                try:
                    body = entry.render(seq, self.epoch)
                except (TypeError, ValueError, KeyError) as error:
                    # A render is the caller's code (JSON of mapping output): the usual ways it
                    # fails are these; anything else is a bug and propagates as it is.
                    raise RenderError(index, error) from error
                if not isinstance(body, bytes):
                    raise RenderError(index, TypeError(f"render returned {type(body).__name__}"))
                rows.append(
                    {"seq": seq, "id": entry.id, "priority": entry.priority, "created": now,
                     "body": body}
                )
            last = first + len(rows) - 1
            try:
                with self._write.begin():
                    self._write.execute(sa.insert(outbox_table), rows)
                    self._write.execute(sa.update(meta_table).values(last_seq=last))
            except SQLAlchemyError as error:
                # The transaction rolled back; the in-memory counter was never advanced.
                raise OutboxError(
                    f"outbox {self.path}: append of {len(rows)} rows failed: {error}"
                ) from error
            self._last_seq = last
            return list(range(first, last + 1))

    def pending(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` pending rows with seq > `after_seq`, in seq order, as (seq, body)."""
        query = (
            sa.select(outbox_table.c.seq, outbox_table.c.body)
            .where(outbox_table.c.seq > after_seq)
            .order_by(outbox_table.c.seq)
            .limit(limit)
        )
        with self._read_lock:
            self._check_open()
            try:
                with self._read.begin():
                    return [(int(seq), bytes(body)) for seq, body in self._read.execute(query)]
            except SQLAlchemyError as error:
                raise OutboxError(f"outbox {self.path}: pending read failed: {error}") from error

    def ack(self, upto_seq: int) -> int:
        """Delete every row with seq <= `upto_seq` in one transaction; return how many went.

        Idempotent: acknowledging the same or a lower sequence again deletes nothing.
        """
        with self._write_lock:
            self._check_open()
            try:
                with self._write.begin():
                    result = self._write.execute(
                        sa.delete(outbox_table).where(outbox_table.c.seq <= upto_seq)
                    )
            except SQLAlchemyError as error:
                raise OutboxError(
                    f"outbox {self.path}: ack up to {upto_seq} failed: {error}"
                ) from error
            return int(result.rowcount)

    def stats(self) -> OutboxStats:
        """Pending count and bytes, first and last pending seq, last allocated seq, epoch."""
        query = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.func.length(outbox_table.c.body)), 0),
            sa.func.min(outbox_table.c.seq),
            sa.func.max(outbox_table.c.seq),
        )
        with self._read_lock:
            self._check_open()
            try:
                with self._read.begin():
                    count, size, first, last = self._read.execute(query).one()
            except SQLAlchemyError as error:
                raise OutboxError(f"outbox {self.path}: stats failed: {error}") from error
        return OutboxStats(
            source=self.source,
            epoch=self.epoch,
            last_seq=self._last_seq,
            pending=int(count),
            pending_bytes=int(size),
            first_pending_seq=None if first is None else int(first),
            last_pending_seq=None if last is None else int(last),
        )

    def close(self) -> None:
        """Close both connections; later calls raise `OutboxClosed`. Safe to call twice."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._write.close()
            self._read.close()
            self.engine.dispose()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
