"""The hub's own events (alerts and assignment changes): their envelope, ids and times.

They are v1 packets whose `source` is `hub/{hub id}` and whose `sourceepoch` is 26 zeros;
their `sequence` is their number among the hub's events in one supplier's feed (1, 2, 3, ...
per supplier, so a supplier sees no gaps and learns nothing of others), filled in when the
event is appended (hub/feed_store.py). Times carry the plant's UTC offset: `hub.tz_offset`
when hub.yaml gives it, else the `tzOffset` of the newest event of the work order (or of
any), else `+00:00`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hub.badrows import BAD_ROW
from hub.schema import packets
from sync.packet import format_sequence

HUB_EPOCH = "0" * 26
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DEFAULT_OFFSET = "+00:00"


def new_ulid(at: float) -> str:
    """A ULID (48-bit millisecond time, 80 random bits, Crockford base32) for a hub event."""
    value = (int(at * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def at_offset(epoch_seconds: float, offset: str) -> str:
    """RFC 3339 with milliseconds at a `±hh:mm` offset: `2026-11-21T09:14:03.120+01:00`."""
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = offset[1:].split(":")
    zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
    return datetime.fromtimestamp(epoch_seconds, UTC).astimezone(zone).isoformat(
        timespec="milliseconds")


def plant_offset(conn: Connection, configured: str | None, work_order: str | None) -> str:
    """The plant's UTC offset for a hub event about `work_order` (see the module docstring)."""
    if configured is not None:
        return configured
    query = sa.select(packets.c.body).order_by(packets.c.pk.desc()).limit(1)
    for where in ([packets.c.work_order == work_order] if work_order else [], []):
        body = conn.execute(query.where(*where)).scalar_one_or_none()
        if body is not None:
            try:
                offset = pydantic_core.from_json(body)["data"]["tzOffset"]
            except BAD_ROW:
                continue
            if isinstance(offset, str):
                return offset
    return DEFAULT_OFFSET


def hub_event(hub_id: str, type_: str, subject: str, at: float, offset: str,
              data: dict[str, Any]) -> dict[str, Any]:
    """A hub event without its `sequence` (set per supplier by `with_sequence`)."""
    when = at_offset(at, offset)
    return {
        "specversion": "1.0", "id": new_ulid(at), "source": f"hub/{hub_id}", "type": type_,
        "subject": subject, "time": when, "recordedtime": when, "sequence": None,
        "sourceepoch": HUB_EPOCH, "datacontenttype": "application/json",
        "dataschema": "keyop:packet:1",
        "data": {"kopVersion": "1.0", **data, "tzOffset": offset, "timeQuality": "synced"},
    }


def with_sequence(event: dict[str, Any], seq: int) -> dict[str, Any]:
    return {**event, "sequence": format_sequence(seq)}
