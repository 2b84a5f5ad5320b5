"""Each supplier's feed: the one append-only log every channel reads (docs/feed.md).

What a supplier is sent is decided once, when an event is stored (ingest routes and redacts
it then), when an assignment changes (`keyop.assignment.added` / `.removed`, and an order's
history as backfill) or when an alert changes, and written into that supplier's feed at a
per-supplier, gap-free position 1, 2, 3, ... in the same transaction (hub/feed_store.py).
MQTT fan-out, `GET /v1/events`, SSE and webhooks all read it, so they carry the same events
in the same order, and a cursor (a position) never skips anything appended later.

A waiting reader learns that something was appended with `Feed.wait`: woken at once by an
append in this process, and by its timeout, a poll, for what other hub processes append.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hub import feed_store

if TYPE_CHECKING:
    from hub.store import Store


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One entry of a supplier's feed."""

    supplier: str
    position: int  # per supplier, 1, 2, 3, ... gap-free
    event_id: str  # the CloudEvent id: the dedupe key
    type: str  # the CloudEvent type
    body: bytes  # the redacted CloudEvent JSON exactly as every channel delivers it
    stored_at: float
    # What fan-out needs for topics and retained state (None for events without them).
    work_order: str | None = None
    operation: str | None = None
    packet_pk: int | None = None  # the packet log row it copies; None for the hub's events


def _entry(row: Any) -> FeedEntry:
    return FeedEntry(row.supplier, int(row.position), row.event_id, row.type,
                     row.body.encode("utf-8"), float(row.stored_at), row.work_order,
                     row.operation, None if row.packet_pk is None else int(row.packet_pk))


class Feed:
    """Reads of the suppliers' feeds, on a hub Store (thread-safe, blocking: call from a
    worker thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, supplier: str, after: int, limit: int) -> list[FeedEntry]:
        """Up to `limit` entries of a supplier's feed after position `after`, in order."""
        with self.store.reader.connect() as conn:
            rows = conn.execute(feed_store.READ, {"supplier": supplier, "after": after,
                                                  "limit": limit}).all()
        return [_entry(r) for r in rows]

    def read_types(self, supplier: str, after: int, limit: int, prefix: str
                   ) -> list[FeedEntry]:
        """As `read`, only entries whose type starts with `prefix` (e.g. `keyop.alert.`: no
        LIKE wildcards)."""
        if set(prefix) & {"%", "_", "\\"}:
            raise ValueError(f"read_types: prefix {prefix!r} holds a LIKE wildcard")
        with self.store.reader.connect() as conn:
            rows = conn.execute(feed_store.READ_TYPES, {
                "supplier": supplier, "after": after, "limit": limit,
                "pattern": prefix + "%"}).all()
        return [_entry(r) for r in rows]

    def head(self, supplier: str) -> int:
        """The last position of a supplier's feed; 0 when it is empty."""
        with self.store.reader.connect() as conn:
            value = conn.execute(feed_store.HEAD, {"supplier": supplier}).scalar_one_or_none()
        return int(value or 0)

    def heads(self, suppliers: Iterable[str]) -> dict[str, int]:
        """`head` of each of `suppliers`, in one read."""
        with self.store.reader.connect() as conn:
            found = {r.supplier: int(r.position) for r in conn.execute(feed_store.HEADS)}
        return {s: found.get(s, 0) for s in suppliers}

    async def wait(self, timeout: float) -> None:
        """Return when this process appends to any feed, or after `timeout` seconds (then
        read again: another process may have appended)."""
        await self.store.appended.wait(timeout)
