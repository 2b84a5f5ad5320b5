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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
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
    insert = (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(feed_heads)
    values = insert.values([{"supplier": s, "position": n, "hub_seq": h}
                            for s, (n, h) in sorted(counts.items())])
    stmt = values.on_conflict_do_update(
        index_elements=[feed_heads.c.supplier],
        set_={"position": feed_heads.c.position + values.excluded.position,
              "hub_seq": feed_heads.c.hub_seq + values.excluded.hub_seq},
    ).returning(feed_heads.c.supplier, feed_heads.c.position, feed_heads.c.hub_seq)
    # Next free numbers: the new head minus what this transaction appends.
    nxt: dict[str, list[int]] = {}
    for supplier, position, hub_seq in conn.execute(stmt).all():
        n, h = counts[supplier]
        nxt[supplier] = [int(position) - n + 1, int(hub_seq) - h + 1]
    done: list[Appended] = []
    rows: list[dict[str, Any]] = []
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
        rows.append({"supplier": item.supplier, "position": position,
                     "event_id": item.event_id, "type": item.type,
                     "work_order": item.work_order, "operation": item.operation,
                     "packet_pk": item.packet_pk, "stored_at": now,
                     "body": body.decode("utf-8")})
    conn.execute(feed.insert(), rows)
    return done


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
