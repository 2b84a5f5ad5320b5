"""The durable edge outbox (SQLite via SQLAlchemy Core): rows, not packet semantics."""

from __future__ import annotations

from edge_store.outbox import (
    Entry,
    Outbox,
    OutboxClosed,
    OutboxError,
    OutboxStats,
    Render,
    RenderError,
    SourceMismatch,
)
from edge_store.writer import GroupWriter

__all__ = [
    "Entry",
    "GroupWriter",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxStats",
    "Render",
    "RenderError",
    "SourceMismatch",
]
