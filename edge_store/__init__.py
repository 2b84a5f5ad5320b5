"""The durable edge outbox (SQLite via SQLAlchemy Core): rows, not packet semantics."""

from __future__ import annotations

from edge_store.outbox import (
    GAP_PRIORITY,
    Bounds,
    Commit,
    Entry,
    Eviction,
    GapEntry,
    Outbox,
    OutboxClosed,
    OutboxError,
    OutboxFull,
    OutboxLocked,
    OutboxStats,
    Policy,
    Render,
    RenderError,
    Row,
    SourceMismatch,
)
from edge_store.worker import OutboxWorker, worker_for
from edge_store.writer import GroupWriter

__all__ = [
    "GAP_PRIORITY",
    "Bounds",
    "Commit",
    "Entry",
    "Eviction",
    "GapEntry",
    "GroupWriter",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxFull",
    "OutboxLocked",
    "OutboxStats",
    "OutboxWorker",
    "Policy",
    "Render",
    "RenderError",
    "Row",
    "SourceMismatch",
    "worker_for",
]
