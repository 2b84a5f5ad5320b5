"""The feed's storage: appending entries to suppliers' feeds inside a writer's transaction,
and reading them.

Positions are gap-free per supplier because each writer, in the transaction that stores the
entries, raises the supplier's `feed_heads` row by the number it appends (one upsert for all
its suppliers, in supplier order) and numbers its entries below the new value. The upsert
locks the row until commit (PostgreSQL: a row lock; SQLite: the file's write lock), so
another writer's numbers start where this one's end, and its rows become visible only after
these: a reader that has seen position N has seen every position below it, and a crash
between storing an event and appending it cannot happen (one commit).

Writers append last in their transaction, after every other lock they take, so writers that
also lock other rows (ingest: progress rows and packet keys) cannot deadlock on feed heads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub.schema import feed, feed_heads

# CloudEvents extension attribute of an entry appended as an order's history when the order
# was newly assigned (docs/feed.md): the event happened before the assignment.
BACKFILL_ATTRIBUTE = "keyopbackfill"
_BACKFILL_JSON = b',"' + BACKFILL_ATTRIBUTE.encode() + b'":true}'


@dataclass(frozen=True, slots=True)
class Append:
    """One entry to append to a supplier's feed.

    `body` is the redacted event's JSON; the hub's own events (alerts, assignments) give
    `render` instead, which makes it from the event's `sequence` in this supplier's feed (its
    count of hub events, 1, 2, 3, ...), known only once the feed head is locked.
    """

    supplier: str
    event_id: str
    type: str
    body: bytes | None = None
    render: Callable[[int], bytes] | None = None
    work_order: str | None = None
    operation: str | None = None
    packet_pk: int | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """An entry as appended: its position and its body."""

    supplier: str
    position: int
    item: Append
    body: bytes


def backfilled(body: bytes) -> bytes:
    """A redacted event's JSON marked as backfill (the attribute added last)."""
    if not body.endswith(b"}"):
        raise ValueError("backfilled: not a JSON object")
    return body[:-1] + _BACKFILL_JSON


def append(conn: Connection, items: Sequence[Append], now: float) -> list[Appended]:
    """Append `items` (in order, per supplier) in `conn`'s transaction; returns them with their
    positions. Call it last in the transaction (see the module docstring)."""
    if not items:
        return []
    counts: dict[str, list[int]] = {}
    for item in items:
        count = counts.setdefault(item.supplier, [0, 0])
        count[0] += 1
        count[1] += item.render is not None
    raised = _raise_heads(conn, sorted((s, n, h) for s, (n, h) in counts.items()))
    # Next free numbers: the new head minus what this transaction appends.
    nxt: dict[str, list[int]] = {}
    for supplier, position, hub_seq in raised:
        n, h = counts[supplier]
        nxt[supplier] = [int(position) - n + 1, int(hub_seq) - h + 1]
    done: list[Appended] = []
    rows: list[tuple[Any, ...]] = []
    for item in items:
        numbers = nxt[item.supplier]
        position = numbers[0]
        numbers[0] += 1
        if item.render is not None:
            body = item.render(numbers[1])
            numbers[1] += 1
        else:
            assert item.body is not None, "Append needs a body or a render"
            body = item.body
        done.append(Appended(item.supplier, position, item, body))
        rows.append((item.supplier, position, item.event_id, item.type, item.work_order,
                     item.operation, item.packet_pk, now, body.decode("utf-8")))
    # On the driver's executemany: thousands of rows a second pass here, and SQLAlchemy's
    # per-row parameter processing would be most of the cost.
    conn.exec_driver_sql(_INSERT_QMARK if conn.dialect.paramstyle == "qmark"
                         else _INSERT_FORMAT, rows)
    return done


def _raise_heads(conn: Connection, rows: list[tuple[str, int, int]]
                 ) -> list[tuple[str, int, int]]:
    """Add `(supplier, entries, hub events)` to the feed heads (creating them), locking each
    row, in supplier order; the new `(supplier, position, hub_seq)`. Fixed statements on the
    driver: one per supplier on SQLite (in-process), one for all on PostgreSQL (a round trip)."""
    if conn.dialect.name == "sqlite":
        raised = []
        for supplier, n, h in rows:
            position, hub_seq = conn.exec_driver_sql(_HEAD_SQLITE, (supplier, n, h)).one()
            raised.append((supplier, int(position), int(hub_seq)))
        return raised
    result = conn.exec_driver_sql(_HEADS_PG, (json.dumps(rows),))
    return [(s, int(p), int(h)) for s, p, h in result.all()]


_UPDATE_HEAD = ("ON CONFLICT (supplier) DO UPDATE SET position = feed_heads.position + "
                "excluded.position, hub_seq = feed_heads.hub_seq + excluded.hub_seq "
                "RETURNING ")
_HEAD_SQLITE = ("INSERT INTO feed_heads (supplier, position, hub_seq) VALUES (?, ?, ?) "
                + _UPDATE_HEAD + "position, hub_seq")
_HEADS_PG = ("INSERT INTO feed_heads (supplier, position, hub_seq) "
             "SELECT k.e->>0, (k.e->>1)::int8, (k.e->>2)::int8 "
             "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS k(e, n) ORDER BY k.n "
             + _UPDATE_HEAD + "supplier, position, hub_seq")
_COLUMNS = ("supplier", "position", "event_id", "type", "work_order", "operation", "packet_pk",
            "stored_at", "body")
_INSERT_FORMAT = (f"INSERT INTO feed ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join(['%s'] * len(_COLUMNS))})")
_INSERT_QMARK = _INSERT_FORMAT.replace("%s", "?")


def event_ids(conn: Connection, supplier: str, work_order: str) -> set[str]:
    """The ids of the events of a work order already in a supplier's feed."""
    return set(conn.execute(sa.select(feed.c.event_id).where(
        feed.c.supplier == supplier, feed.c.work_order == work_order)).scalars())


# Reads (the columns FeedEntry is made of, in its order).
ENTRY_COLUMNS = (feed.c.supplier, feed.c.position, feed.c.event_id, feed.c.type, feed.c.body,
                 feed.c.stored_at, feed.c.work_order, feed.c.operation, feed.c.packet_pk)
READ = (sa.select(*ENTRY_COLUMNS)
        .where(feed.c.supplier == sa.bindparam("supplier"),
               feed.c.position > sa.bindparam("after"))
        .order_by(feed.c.position).limit(sa.bindparam("limit")))
READ_TYPES = (sa.select(*ENTRY_COLUMNS)
              .where(feed.c.supplier == sa.bindparam("supplier"),
                     feed.c.position > sa.bindparam("after"),
                     feed.c.type.like(sa.bindparam("pattern")))
              .order_by(feed.c.position).limit(sa.bindparam("limit")))
HEAD = sa.select(feed_heads.c.position).where(feed_heads.c.supplier == sa.bindparam("supplier"))
HEADS = sa.select(feed_heads.c.supplier, feed_heads.c.position)
