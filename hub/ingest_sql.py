"""The hub store's ingest statements, one plan per database, run on the DBAPI cursor of the
store's SQLAlchemy connection (same connection, same transaction; `hub/store.py` begins and
commits it).

Why not `Connection.execute`: at thousands of packets a second, SQLAlchemy's per-statement work
(compiled-cache lookup, parameter processing, result objects) and every round trip's wake-up
were most of the store's CPU. So the SQL is written once, here; rows go in as tuples; and on
PostgreSQL a batch of any size is four round trips:

1. in one pipeline: BEGIN, lock the progress rows (first, so that concurrent writers of one
   source take turns), insert the packets;
2. upsert operation states, and in the same statement probe for seqs stored past each
   source's new contiguous seq and save it where there are none;
3. COMMIT (by SQLAlchemy).

PostgreSQL reads rows from one JSON array parameter (built by pydantic-core; floats are
written shortest-round-trip and read back exactly by float8in) and the bodies, the bulk of the
bytes, from one binary `text[]` parameter, which needs no escaping. The array is cast to jsonb,
parsed once: with json, every `->>` would parse its element again. The statements never change
with the batch size, so psycopg prepares them once per connection.
"""

from __future__ import annotations

import functools
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hub.schema import op_state
from hub.state import StateRow, upsert_statement

PACKET_COLUMNS = ("source", "epoch", "seq", "id", "type", "subject", "work_order", "operation",
                  "event_time", "received_at", "good", "body")
# A packet row: the values of PACKET_COLUMNS, in that order (the body last).
PacketRow = tuple[Any, ...]
Key = tuple[str, str]
Ident = tuple[str, str, int]

def _to_json(value: Any) -> str:
    """The JSON for PostgreSQL: compact, non-ASCII kept as is (no \\u escapes to decode), by
    pydantic-core (a third of the json module's time). A NaN or infinity would be written as
    such and refused by PostgreSQL, never turned into null (event times are validated finite
    anyway)."""
    return pydantic_core.to_json(value, inf_nan_mode="constants").decode()

class PgIngest:
    """PostgreSQL ingest on a psycopg 3 connection (see the module docstring)."""

    LOCK = (
        "INSERT INTO source_progress AS p (source, epoch, contiguous_seq, updated_at) "
        "SELECT k.e->>0, k.e->>1, 0, %s "
        "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS k(e, n) ORDER BY k.n "
        # A no-op update: it takes the row lock whether or not the row was there, and
        # RETURNING reads the value under that lock.
        "ON CONFLICT (source, epoch) DO UPDATE SET contiguous_seq = p.contiguous_seq "
        "RETURNING source, epoch, contiguous_seq"
    )
    # In key order, so concurrent workers lock rows in one order.
    INSERT = (
        f"INSERT INTO packets ({', '.join(PACKET_COLUMNS)}) "
        "SELECT r.e->>0, r.e->>1, (r.e->>2)::int8, r.e->>3, r.e->>4, r.e->>5, r.e->>6, "
        "r.e->>7, (r.e->>8)::float8, (r.e->>9)::float8, (r.e->>10)::int8, r.body "
        "FROM ROWS FROM (jsonb_array_elements(%s::jsonb), unnest(%b::text[])) AS r(e, body) "
        "ORDER BY r.e->>0, r.e->>1, (r.e->>2)::int8 "
        "ON CONFLICT DO NOTHING RETURNING pk, source, epoch, seq"
    )

    def __init__(self) -> None:
        casts = {"good": "int8", "scrap": "int8", "rework": "int8", "planned": "int8",
                 "started_at": "float8", "completed_at": "float8", "last_time": "float8",
                 "last_seq": "int8", "last_pk": "int8", "received_at": "float8"}
        fields = ", ".join(
            f"(s.e->>{i})::{casts[name]} AS {name}" if name in casts else f"s.e->>{i} AS {name}"
            for i, name in enumerate(StateRow._fields))
        staged = sa.table("st", *(sa.column(n) for n in StateRow._fields))
        upsert = str(upsert_statement(postgresql.insert(op_state).from_select(
            list(StateRow._fields),
            sa.select(*staged.c).order_by(staged.c.work_order, staged.c.operation),
        )).compile(dialect=postgresql.psycopg.dialect()))
        # States, then the progress save and probe (docs/architecture.md, guarantee 2): `want` holds
        # each (source, epoch) with the contiguous seq this batch makes it if nothing is stored
        # past it; `beyond` are those with a seq stored past it (they take the full walk); the
        # others are saved, never moving backwards. One snapshot: a key is saved or returned.
        self.finish_sql = (
            f"WITH st AS (SELECT {fields} FROM jsonb_array_elements(%s::jsonb) AS s(e)), "
            f"up AS ({upsert}), "
            "want AS (SELECT w.e->>0 AS source, w.e->>1 AS epoch, (w.e->>2)::int8 AS seq "
            "FROM jsonb_array_elements(%s::jsonb) AS w(e)), "
            "beyond AS (SELECT w.source, w.epoch FROM want w WHERE EXISTS ("
            "SELECT FROM packets k WHERE k.source = w.source AND k.epoch = w.epoch "
            "AND k.seq > w.seq)), "
            "saved AS (UPDATE source_progress p SET contiguous_seq = w.seq, updated_at = %s "
            "FROM want w WHERE p.source = w.source AND p.epoch = w.epoch "
            "AND w.seq > p.contiguous_seq AND NOT EXISTS ("
            "SELECT FROM beyond b WHERE b.source = w.source AND b.epoch = w.epoch)) "
            "SELECT source, epoch FROM beyond"
        )

    def lock_and_insert(self, dbapi: Any, keys: list[Key], rows: list[PacketRow], now: float
                        ) -> tuple[dict[Key, int], dict[Ident, int]]:
        """Lock (creating) the progress rows of `keys`, then insert `rows`, skipping stored
        ones: the locked contiguous seqs, and the pk of each row inserted, by identity."""
        lock = dbapi.cursor()
        insert = dbapi.cursor()
        try:
            # One round trip for BEGIN, the lock and the insert: the server still runs them
            # in order, so the lock is held before any packet row is written.
            with dbapi.pipeline():
                lock.execute(self.LOCK, (now, _to_json(keys)))
                insert.execute(self.INSERT, (_to_json([r[:-1] for r in rows]),
                                             [r[-1] for r in rows]))
            current = {(s, e): q for s, e, q in lock.fetchall()}
            inserted = {(s, e, q): pk for pk, s, e, q in insert.fetchall()}
        finally:
            lock.close()
            insert.close()
        return current, inserted

    def finish(self, dbapi: Any, states: list[StateRow], tentative: dict[Key, int],
               now: float) -> set[Key]:
        """Upsert `states`; save each tentative contiguous seq that nothing is stored past;
        return the keys with a seq stored past it (their progress is left as it was)."""
        with dbapi.cursor() as cursor:
            cursor.execute(self.finish_sql, (
                _to_json(states), _to_json([(s, e, q) for (s, e), q in tentative.items()]), now))
            return {(s, e) for s, e in cursor.fetchall()}


# SQLite binds at most 32,766 parameters a statement (3.32+); 256 packet rows use 3,072.
_SQLITE_CHUNK = 256


class SqliteIngest:
    """SQLite ingest on the sqlite3 connection: in-process, so statements count, not round
    trips; multi-row VALUES where rows come back (RETURNING), executemany where they do not."""

    def __init__(self) -> None:
        binds: dict[str, Any] = {name: sa.bindparam(name) for name in StateRow._fields}
        compiled = upsert_statement(sqlite.insert(op_state).values(binds)).compile(
            dialect=sqlite.pysqlite.dialect())
        # Positional binds in StateRow order: the rows are passed as they are.
        assert tuple(compiled.positiontup or ()) == StateRow._fields
        self.state_upsert = str(compiled)

    def lock_and_insert(self, dbapi: Any, keys: list[Key], rows: list[PacketRow], now: float
                        ) -> tuple[dict[Key, int], dict[Ident, int]]:
        """As `PgIngest.lock_and_insert` (SQLite: the write lock, taken by the first insert)."""
        cursor = dbapi.cursor()
        try:
            current: dict[Key, int] = {}
            for i in range(0, len(keys), _SQLITE_CHUNK):
                chunk = keys[i:i + _SQLITE_CHUNK]
                cursor.execute(_sqlite_lock(len(chunk)),
                               [v for s, e in chunk for v in (s, e, now)])
                current.update(((s, e), q) for s, e, q in cursor.fetchall())
            inserted: dict[Ident, int] = {}
            for i in range(0, len(rows), _SQLITE_CHUNK):
                chunk = rows[i:i + _SQLITE_CHUNK]
                cursor.execute(_sqlite_insert(len(chunk)), [v for r in chunk for v in r])
                inserted.update(((s, e, q), pk) for pk, s, e, q in cursor.fetchall())
        finally:
            cursor.close()
        return current, inserted

    def finish(self, dbapi: Any, states: list[StateRow], tentative: dict[Key, int],
               now: float) -> set[Key]:
        """As `PgIngest.finish` (SQLite: we hold the write lock, so probe, then save)."""
        cursor = dbapi.cursor()
        try:
            if states:
                cursor.executemany(self.state_upsert, states)
            beyond: set[Key] = set()
            keys = list(tentative.items())
            for i in range(0, len(keys), _SQLITE_CHUNK):
                chunk = keys[i:i + _SQLITE_CHUNK]
                cursor.execute(_sqlite_probe(len(chunk)),
                               [v for (s, e), q in chunk for v in (s, e, q)])
                beyond.update((s, e) for s, e in cursor.fetchall())
            cursor.executemany(
                "UPDATE source_progress SET contiguous_seq = ?, updated_at = ? "
                "WHERE source = ? AND epoch = ? AND contiguous_seq < ?",
                [(q, now, s, e, q) for (s, e), q in keys if (s, e) not in beyond])
        finally:
            cursor.close()
        return beyond


def _values(count: int, width: int) -> str:
    row = f"({', '.join('?' * width)})"
    return ", ".join([row] * count)


@functools.lru_cache(maxsize=64)
def _sqlite_lock(count: int) -> str:
    return ("INSERT INTO source_progress (source, epoch, updated_at, contiguous_seq) "
            f"VALUES {', '.join(['(?, ?, ?, 0)'] * count)} "
            "ON CONFLICT (source, epoch) DO UPDATE SET contiguous_seq = contiguous_seq "
            "RETURNING source, epoch, contiguous_seq")


@functools.lru_cache(maxsize=300)
def _sqlite_insert(count: int) -> str:
    return (f"INSERT INTO packets ({', '.join(PACKET_COLUMNS)}) "
            f"VALUES {_values(count, len(PACKET_COLUMNS))} "
            "ON CONFLICT DO NOTHING RETURNING pk, source, epoch, seq")


@functools.lru_cache(maxsize=64)
def _sqlite_probe(count: int) -> str:
    return ("SELECT w.column1, w.column2 FROM (VALUES " + _values(count, 3) + ") AS w "
            "WHERE EXISTS (SELECT 1 FROM packets k WHERE k.source = w.column1 "
            "AND k.epoch = w.column2 AND k.seq > w.column3)")

