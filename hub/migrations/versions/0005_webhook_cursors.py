"""Webhook delivery cursors and health.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_cursors",
        sa.Column("supplier", sa.String(64), primary_key=True),
        sa.Column("endpoint", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("failing_since", sa.Double),
        sa.Column("failing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.String(512)),
    )


def downgrade() -> None:
    op.drop_table("webhook_cursors")
