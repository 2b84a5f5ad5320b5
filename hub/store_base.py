"""The hub store's engine and what every part of it shares: the connection pools, the SQLite
writer lock, the statements built once, and small SQL helpers. The parts (ingest writes,
reads, assignments and leases, alerts) are mixins of `hub.store.Store`."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from hub import migrate
from hub.config import HubConfig
from hub.feed_route import FeedRouting
from hub.ingest_sql import PgIngest, SqliteIngest
from hub.progress import progress_save
from hub.pulse import Pulse
from hub.schema import op_state, supplier_cursors

log = logging.getLogger(__name__)

# The columns of StoredPacket (hub/store_reads.py), in its order.
PACKET_READ_COLUMNS = ("pk", "source", "epoch", "seq", "id", "type", "work_order", "operation",
                       "event_time", "body")


class StoreBase:
    """The hub's database. Thread-safe: calls run in worker threads (`asyncio.to_thread`).

    With a `config`, ingest, assignments and alerts append to the suppliers' feeds
    (hub/feed.py); without one (tools, some tests) nothing is appended.
    """

    def __init__(self, url: str, config: HubConfig | None = None) -> None:
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
        self.feed_routing: FeedRouting | None = None
        if config is not None:
            self.feed_routing = FeedRouting(config)
        # Fired after every commit that appended to a feed (hub/feed.py `Feed.wait`).
        self.appended = Pulse()
        # Reads, built once too. On PostgreSQL they run in autocommit: a lone SELECT needs no
        # BEGIN and ROLLBACK around it (three round trips become one); a read of several
        # statements sees one snapshot per statement either way (READ COMMITTED).
        self.reader = (self.engine if self.is_sqlite
                       else self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        self._packets_after = driver_sql(
            f"SELECT {', '.join(PACKET_READ_COLUMNS)} FROM packets "
            "WHERE pk > %s ORDER BY pk LIMIT %s", self.is_sqlite)
        self._states_of = sa.select(op_state).where(
            op_state.c.work_order.in_(sa.bindparam("orders", expanding=True)))
        self._cursors_of = sa.select(supplier_cursors.c.supplier, supplier_cursors.c.position
                                     ).where(supplier_cursors.c.supplier.in_(
                                         sa.bindparam("names", expanding=True)))
        cursor_upsert = self._insert(supplier_cursors)
        self._cursors_upsert = cursor_upsert.on_conflict_do_update(
            index_elements=[supplier_cursors.c.supplier],
            set_={"position": cursor_upsert.excluded.position})

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """One round trip to the database (readiness); raises what the driver raises."""
        with self.reader.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def with_own_pool(self, connections: int) -> Self:
        """This store on an engine of its own (same database, at most `connections`
        connections), for the supplier API: its reads never wait for a connection ingest
        holds, nor ingest for one of theirs. SQLite writers still share this store's lock
        (one writer per file), and appends wake the same waiters. `close()` on it closes only
        its own pool."""
        if self.is_sqlite and self.url.database in (None, "", ":memory:"):
            return self  # a second engine would open another, empty, in-memory database
        view = copy.copy(self)
        view.engine = sa.create_engine(self.url, pool_size=connections, max_overflow=0)
        if self.is_sqlite:
            sa.event.listen(view.engine, "connect", _sqlite_pragmas)
        view.reader = (view.engine if self.is_sqlite
                       else view.engine.execution_options(isolation_level="AUTOCOMMIT"))
        return view

    def _writing(self) -> threading.Lock | _NoLock:
        return self._write_lock or _NoLock()

    def writing(self) -> threading.Lock | _NoLock:
        """Hold around a write transaction of a module with tables of its own: SQLite has one
        writer per file (hub/webhooks/cursors.py)."""
        return self._writing()

    @staticmethod
    def _take_write_lock(conn: Connection) -> None:
        """Make a transaction that reads before it writes take the database's write lock
        first. SQLite: a write statement takes it (one that changes nothing is enough), so
        the reads see the newest commit and the later writes cannot fail on a stale
        snapshot. PostgreSQL needs nothing here (its writers lock rows)."""
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("UPDATE feed_heads SET position = position WHERE 0")


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[None]:
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


def _create_private(path: Path) -> None:
    """Create the SQLite file mode 0600 before SQLite does: it holds restricted params, and
    SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("hub database %s is readable by others (mode %o): chmod 600 it", path, mode,
                    extra={"path": str(path), "mode": f"{mode:o}"})


def storable(text: str, size: int) -> str:
    """Text any database keeps as it is: PostgreSQL refuses NUL and lone surrogates are not
    UTF-8, so both are written escaped; cut to `size` characters."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:size]


def driver_sql(sql: str, is_sqlite: bool) -> str:
    """SQL written for psycopg (`%s` binds) in the DBAPI's bind style."""
    return sql.replace("%s", "?") if is_sqlite else sql


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # First, so the pragmas below wait for another process's lock too. (The switch of a new
    # file to WAL does not wait even so: hub/migrate.py holds a file lock around it.)
    cursor.execute("PRAGMA busy_timeout=10000")
    # WAL lets fan-out read while ingest writes; FULL makes a commit durable before the ack.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
