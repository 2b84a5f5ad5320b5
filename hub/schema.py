"""The hub's tables (SQLAlchemy Core). Alembic migrations (hub/migrations) create and upgrade
them; this module is what the code reads and writes, and a test keeps the two in step."""

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
    # Cumulative good count of operation events, for the progress-rate estimate (alerts).
    sa.Column("good", sa.BigInteger),
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

# MQTT fan-out's cursor of each supplier: the last feed position the broker has taken.
supplier_cursors = sa.Table(
    "supplier_cursors",
    metadata,
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

# Each supplier's append-only feed (hub/feed.py): what it is sent, decided once when an event
# is stored, an assignment changes or an alert is raised, at a gap-free per-supplier position.
feed = sa.Table(
    "feed",
    metadata,
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, primary_key=True),
    sa.Column("event_id", sa.String(26), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("work_order", sa.String(128)),
    sa.Column("operation", sa.String(128)),
    # The packet log row it copies (None for the hub's own events: alerts, assignments).
    sa.Column("packet_pk", sa.BigInteger),
    sa.Column("stored_at", sa.Double, nullable=False),
    # The redacted CloudEvent JSON exactly as every channel delivers it.
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("ix_feed_supplier_work_order", "supplier", "work_order"),
)

# The last position of each supplier's feed, and how many of its entries the hub made itself
# (the `sequence` of the hub's own events in that feed). Its row is locked by every writer
# that appends to the feed, so positions are handed out in commit order, without gaps.
feed_heads = sa.Table(
    "feed_heads",
    metadata,
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("hub_seq", sa.BigInteger, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("pk", _PK, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("topic", sa.String(512), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    # At most a bounded prefix of the payload (hub/store.py DEAD_LETTER_PREFIX); `size` is
    # the whole payload's, `items` how many bad events of one message this letter stands for.
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("items", sa.Integer, nullable=False, server_default="1"),
    sa.Index("ix_dead_letters_received_at", "received_at"),
)

# Sequences of packets the hub refused (dead-lettered) whose identity was trustworthy: like an
# edge's declared gap, they count as settled, so one bad packet cannot hold back every
# acknowledgement after it (hub/progress.py). The dead letter says why.
refused_seqs = sa.Table(
    "refused_seqs",
    metadata,
    sa.Column("source", sa.String(160), primary_key=True),
    sa.Column("epoch", sa.String(26), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("refused_at", sa.Double, nullable=False),
)

# The state of each work order's operation: the newest operation event's view (newest by
# per-source sequence, and by event time across sources), whatever the arrival order.
op_state = sa.Table(
    "op_state",
    metadata,
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
    sa.Column("customer_orders", sa.Text, nullable=False),  # JSON array
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

# Order-to-supplier assignments made through the API (besides hub.yaml routes), with due times.
assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("work_order", sa.String(128), primary_key=True),
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("due", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# Every API read, refused ones included: who, what, when, result.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("pk", _PK, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("supplier", sa.String(64)),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("query", sa.String(1024), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("client", sa.String(64), nullable=False),
    # Requests this row stands for (refusals without a valid key are aggregated).
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),
    sa.Index("ix_audit_log_at", "at"),
)

# Delay alerts: one row per (work order, operation, kind), its current status; each change
# becomes one alert packet per concerned supplier.
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("pk", _PK, primary_key=True, autoincrement=True),
    sa.Column("work_order", sa.String(128), nullable=False),
    sa.Column("operation", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("supplier", sa.String(64), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("ix_alerts_key", "work_order", "operation", "kind", "supplier"),
)

# Leases: which hub worker runs a singleton job (fan-out, alert evaluation) right now.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
)

# Webhook delivery cursors (hub/webhooks/cursors.py): per supplier and endpoint name, the feed
# position of the last entry settled (answered with a 2xx, or not of a type it takes).
webhook_cursors = sa.Table(
    "webhook_cursors",
    metadata,
    sa.Column("supplier", sa.String(64), primary_key=True),
    sa.Column("endpoint", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # The delivery's health, written on each change by the delivering process, so every hub
    # process's admin API and /metrics show it: the outage's first failure (Unix time), whether
    # it has lasted webhooks.failing_after_s (the hub alert), the last answer or error.
    sa.Column("failing_since", sa.Double),
    sa.Column("failing", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(512)),
)

# Progress board sessions (hub/board/sessions.py): the cookie holds a random token, the table
# its hash, so a copy of the database logs nobody in. Rows outlive a hub restart.
board_sessions = sa.Table(
    "board_sessions",
    metadata,
    sa.Column("token_hash", sa.String(80), primary_key=True),
    sa.Column("user", sa.String(128), nullable=False),
    # The supplier the session sees; NULL for the plant's coordinator.
    sa.Column("supplier", sa.String(64)),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("ix_board_sessions_expires_at", "expires_at"),
)
