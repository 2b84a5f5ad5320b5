"""The walking skeleton's tables: packet log, source progress, supplier cursors, dead letters.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "packets",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
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
    )
    op.create_index("ix_packets_wo_op", "packets", ["work_order", "operation"])
    op.create_table(
        "source_progress",
        sa.Column("source", sa.String(160), primary_key=True),
        sa.Column("epoch", sa.String(26), primary_key=True),
        sa.Column("contiguous_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "supplier_cursors",
        sa.Column("supplier", sa.String(64), primary_key=True),
        sa.Column("last_pk", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("dead_letters", "supplier_cursors", "source_progress", "packets"):
        op.drop_table(table)
