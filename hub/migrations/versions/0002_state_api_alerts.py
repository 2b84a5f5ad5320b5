"""Operation state, API assignments and audit log, delay alerts, worker leases; packets.good.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("packets") as batch:
        batch.add_column(sa.Column("good", sa.BigInteger))
    op.create_table(
        "op_state",
        sa.Column("work_order", sa.String(128), primary_key=True),
        sa.Column("operation", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("good", sa.BigInteger, nullable=False),
        sa.Column("scrap", sa.BigInteger, nullable=False),
        sa.Column("rework", sa.BigInteger, nullable=False),
        sa.Column("planned", sa.BigInteger),
        sa.Column("uom", sa.String(8), nullable=False),
        sa.Column("station", sa.String(512), nullable=False),
        sa.Column("customer_orders", sa.Text, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("completed_at", sa.Double),
        sa.Column("last_time", sa.Double, nullable=False),
        sa.Column("last_source", sa.String(160), nullable=False),
        sa.Column("last_epoch", sa.String(26), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_pk", sa.BigInteger, nullable=False),
        sa.Column("last_id", sa.String(26), nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("work_order", sa.String(128), primary_key=True),
        sa.Column("supplier", sa.String(64), primary_key=True),
        sa.Column("due", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("supplier", sa.String(64)),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("query", sa.String(1024), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("work_order", sa.String(128), nullable=False),
        sa.Column("operation", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("supplier", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_alerts_key", "alerts", ["work_order", "operation", "kind", "supplier"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "alerts", "audit_log", "assignments", "op_state"):
        op.drop_table(table)
    with op.batch_alter_table("packets") as batch:
        batch.drop_column("good")
