"""The edge's health for the plant's coordinator: per gateway, the last packet the hub
received, how far it has acknowledged, the sequence gaps it has seen (stored past a hole,
or declared dropped by the edge), and the dead letters.

Read from the hub's own tables (one statement each); a gateway in hub.yaml that never sent a
packet is listed as never seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from hub.config import HubConfig
from hub.schema import dead_letters, packets, source_progress
from hub.store import Store


@dataclass(slots=True)
class GatewayHealth:
    source: str
    last_packet: float | None
    last_seq: int
    acknowledged: int
    declared_gaps: int
    stale: bool

    @property
    def missing(self) -> int:
        """Sequences stored past the acknowledged one: packets behind a hole."""
        return max(0, self.last_seq - self.acknowledged)


@dataclass(slots=True)
class Health:
    gateways: list[GatewayHealth]
    dead_letters: int
    dead_letters_day: int
    last_dead_letter: float | None


def edge_health(store: Store, config: HubConfig, now: float | None = None) -> Health:
    now = time.time() if now is None else now
    stale_after = config.board.stale_after_s
    p, sp = packets.c, source_progress.c
    with store.engine.connect() as conn:
        latest = conn.execute(
            sa.select(p.source, sa.func.max(p.received_at).label("last"),
                      sa.func.max(p.seq).label("seq"))
            .where(p.source.not_like("hub/%")).group_by(p.source, p.epoch)).all()
        acked = {(r.source): int(r.contiguous_seq) for r in conn.execute(
            sa.select(sp.source, sp.contiguous_seq).order_by(sp.updated_at)).all()}
        gaps: dict[str, int] = dict(conn.execute(
            sa.select(p.source, sa.func.count()).where(p.type == "keyop.outbox.gap")
            .group_by(p.source)).all())
        dead = conn.execute(sa.select(sa.func.count(), sa.func.max(dead_letters.c.received_at))
                            ).one()
        dead_day = conn.execute(sa.select(sa.func.count()).where(
            dead_letters.c.received_at > now - 86_400)).scalar_one()
    by_source: dict[str, GatewayHealth] = {}
    for row in latest:
        seen = by_source.get(row.source)
        if seen is not None and (seen.last_packet or 0) >= row.last:
            continue  # an older epoch of the same gateway
        by_source[row.source] = GatewayHealth(
            row.source, float(row.last), int(row.seq), acked.get(row.source, 0),
            int(gaps.get(row.source, 0)), now - float(row.last) > stale_after)
    named = {source.rsplit("/", 1)[-1] for source in by_source}
    for gateway, entry in config.gateways.items():
        if gateway not in named:
            source = f"{entry.site}/{gateway}"
            by_source[source] = GatewayHealth(source, None, 0, 0, 0, True)
    return Health(sorted(by_source.values(), key=lambda g: g.source), int(dead[0]),
                  int(dead_day), None if dead[1] is None else float(dead[1]))
