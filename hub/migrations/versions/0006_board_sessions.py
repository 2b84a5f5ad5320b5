"""Progress board sessions.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "board_sessions",
        sa.Column("token_hash", sa.String(80), primary_key=True),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("supplier", sa.String(64)),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("ix_board_sessions_expires_at", "board_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_board_sessions_expires_at", "board_sessions")
    op.drop_table("board_sessions")
