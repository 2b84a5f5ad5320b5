"""Bounded dead letters (payload prefix, size, item count), refused sequences, and aggregated
audit rows (count).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        # The payload's full size in bytes; `payload` keeps at most a bounded prefix.
        batch.add_column(sa.Column("size", sa.BigInteger, nullable=False, server_default="0"))
        # How many bad items (events of a batch message) this one letter stands for.
        batch.add_column(sa.Column("items", sa.Integer, nullable=False, server_default="1"))
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])
    op.create_table(
        "refused_seqs",
        sa.Column("source", sa.String(160), primary_key=True),
        sa.Column("epoch", sa.String(26), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("refused_at", sa.Double, nullable=False),
    )
    with op.batch_alter_table("audit_log") as batch:
        # Requests this row stands for: refusals without a valid key are aggregated.
        batch.add_column(sa.Column("count", sa.Integer, nullable=False, server_default="1"))
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", "audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("count")
    op.drop_table("refused_seqs")
    op.drop_index("ix_dead_letters_received_at", "dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("items")
        batch.drop_column("size")
