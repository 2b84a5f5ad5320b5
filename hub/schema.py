"""The hub's tables (SQLAlchemy Core), created at start; Alembic migrations come later."""

from __future__ import annotations

import sqlalchemy as sa

# SQLite only makes INTEGER PRIMARY KEY an auto-increment rowid alias, not BIGINT.
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

packets = sa.Table(
    "packets",
    metadata,
    sa.Column("pk", _PK, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(160), nullable=False),
    sa.Column("epoch", sa.String(26), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("id", sa.String(26), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("work_order", sa.String(128)),
    sa.Column("operation", sa.String(128)),
    sa.Column("event_time", sa.Double, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.UniqueConstraint("source", "epoch", "seq", name="uq_packets_source_epoch_seq"),
    sa.UniqueConstraint("source", "id", name="uq_packets_source_id"),
    sa.Index("ix_packets_wo_op", "work_order", "operation"),
)

source_progress = sa.Table(
    "source_progress",
    metadata,
    sa.Column("source", sa.String(160), primary_key=True),
    sa.Column("epoch", sa.String(26), primary_key=True),
    sa.Column("contiguous_seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

supplier_cursors = sa.Table(
    "supplier_cursors",
    metadata,
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("last_pk", sa.BigInteger, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("pk", _PK, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("topic", sa.String(512), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)
