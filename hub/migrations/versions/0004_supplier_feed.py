"""The per-supplier feed: `feed` and `feed_heads`; fan-out cursors become feed positions.

The feed starts empty: what was stored before the upgrade was routed at query time and is
not copied into it (the routing of that time cannot be reconstructed). MQTT cursors start at
the beginning of the new feeds.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed",
        sa.Column("supplier", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, primary_key=True),
        sa.Column("event_id", sa.String(26), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("work_order", sa.String(128)),
        sa.Column("operation", sa.String(128)),
        sa.Column("packet_pk", sa.BigInteger),
        sa.Column("stored_at", sa.Double, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_feed_supplier_work_order", "feed", ["supplier", "work_order"])
    op.create_table(
        "feed_heads",
        sa.Column("supplier", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("hub_seq", sa.BigInteger, nullable=False),
    )
    op.execute("DELETE FROM supplier_cursors")
    with op.batch_alter_table("supplier_cursors") as batch:
        batch.alter_column("last_pk", new_column_name="position")


def downgrade() -> None:
    op.execute("DELETE FROM supplier_cursors")
    with op.batch_alter_table("supplier_cursors") as batch:
        batch.alter_column("position", new_column_name="last_pk")
    op.drop_table("feed_heads")
    op.drop_index("ix_feed_supplier_work_order", "feed")
    op.drop_table("feed")
