"""The hub store, on SQLAlchemy Core; the same code runs on SQLite and PostgreSQL.

One class of several parts, each a module of its own: the engine and shared statements
(hub/store_base.py), ingest writes (hub/store_ingest.py), reads (hub/store_reads.py),
assignments, audit, leases and cursors (hub/store_admin.py) and alerts
(hub/store_alerts.py). The suppliers' feeds are hub/feed.py and hub/feed_store.py.
"""

from __future__ import annotations

from hub.store_admin import AdminMixin
from hub.store_alerts import AlertsMixin
from hub.store_ingest import (
    DEAD_LETTER_PREFIX,
    REASON_CHARS,
    DeadLetter,
    Ident,
    Incoming,
    IngestMixin,
    StoreResult,
)
from hub.store_reads import ReadsMixin, StoredPacket

__all__ = ["DEAD_LETTER_PREFIX", "REASON_CHARS", "DeadLetter", "Ident", "Incoming", "Store",
           "StoreResult", "StoredPacket"]


class Store(IngestMixin, ReadsMixin, AdminMixin, AlertsMixin):
    """The hub's database. Thread-safe: calls run in worker threads (`asyncio.to_thread`)."""
