"""The `keyop.outbox.gap` packet: what the outbox had to drop, named to the hub (docs/packet.md).

The outbox knows rows, not packets; when a bound, a full disk or an operator's purge forces
rows out, it asks this factory for the row that says so. The gap packet is a packet like any
other (its own sequence, id and epoch), with `data.gap = {fromSequence, toSequence, reason}`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ulid import ULID

from edge_store.outbox import GAP_PRIORITY, Entry, GapEntry
from gateway.config import GatewayConfig
from mapping.engine import CompiledMapping
from mapping.station import EARLIEST_TRUSTED_TIME
from sync.packet import Draft, format_sequence
from sync.packet_codec import render

GAP_TYPE = "keyop.outbox.gap"


def _tz_offset(zone: ZoneInfo, when: float) -> str:
    offset = datetime.fromtimestamp(when, tz=zone).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def gap_entry_factory(config: GatewayConfig, compiled: CompiledMapping | None) -> GapEntry:
    """A `gap_entry(first, last, reason)` for this gateway's outbox."""
    source = config.source
    zone = compiled.timezone if compiled is not None else ZoneInfo("UTC")
    parts = [config.settings.gateway.site]
    if compiled is not None:
        plant = compiled.model.plant
        parts += [p for p in (plant.area, plant.line) if p]
    parts.append(config.gateway_id)
    path = "/".join(parts)
    return make_gap_entry_factory(source, path, zone)


def make_gap_entry_factory(source: str, equipment_path: str, zone: ZoneInfo) -> GapEntry:
    """The factory itself, for callers without a gateway.yaml (benchmarks, tests)."""

    def gap_entry(first: int, last: int, reason: str) -> Entry:
        now = time.time()
        draft = Draft(
            GAP_TYPE,
            equipment_path,
            now,
            {
                "kopVersion": "1.0",
                "equipment": {"path": equipment_path, "level": "Gateway"},
                "gap": {"fromSequence": format_sequence(first),
                        "toSequence": format_sequence(last), "reason": reason},
                "tzOffset": _tz_offset(zone, now),
                "timeQuality": "synced" if now >= EARLIEST_TRUSTED_TIME else "unsynced",
            },
            GAP_PRIORITY,
        )
        packet_id = str(ULID())

        def body(seq: int, epoch: str) -> bytes:
            return render(draft, id=packet_id, source=source, sequence=seq, epoch=epoch,
                          recorded=time.time())

        return Entry(packet_id, body, GAP_PRIORITY, GAP_TYPE)

    return gap_entry
