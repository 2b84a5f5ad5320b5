"""What a gateway may report, decided per packet before it is stored.

The broker ACL lets a gateway publish only on its own topic; this is the next fence: hub.yaml's
`gateways:` says for each gateway the site (and optionally areas, lines, equipment prefixes and
work-order patterns) it speaks for. A valid packet outside that is refused with the reason; a
hub.yaml without `gateways:` (a demo, an open broker) admits every gateway for any site.

Time: an event time further ahead of the hub's receive time than `hub.max_future_skew_s` is a
wrong clock, not a future event. It is stored as it came, flagged, and ordered as if it
happened when the hub received it, so it can never win "the later event time wins".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from hub.config import GatewayEntry, HubConfig
from sync.packet import (
    MAX_INT,
    SEQUENCE_PATTERN,
    SOURCE_PATTERN,
    ULID_PATTERN,
    Packet,
    parse_time,
)

_SOURCE = re.compile(SOURCE_PATTERN)
_ULID = re.compile(ULID_PATTERN)
_SEQUENCE = re.compile(SEQUENCE_PATTERN)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A packet the gateway may report; `time` is the event time to order it by."""

    time: float
    future: bool  # its own time was beyond the allowed skew


# Event types only the hub makes (its assignment changes): refused from a gateway.
HUB_ONLY_PREFIX = "keyop.assignment."


class Admission:
    """hub.yaml's gateway bindings and time skew, applied to validated packets."""

    def __init__(self, config: HubConfig) -> None:
        self.gateways: dict[str, GatewayEntry] = dict(config.gateways)
        self.open = not self.gateways
        self.max_skew_s = config.hub.max_future_skew_s

    def source_allowed(self, gateway: str, source: str) -> str | None:
        """Why `gateway` may not speak for `source` (`{site}/{gateway}`), or None."""
        site, _, name = source.partition("/")
        if name != gateway:
            return (f"source: {source!r} does not belong to gateway {gateway!r} of the topic "
                    "(a gateway speaks only for itself)")
        if self.open:
            return None
        binding = self.gateways.get(gateway)
        if binding is None:
            return f"source: gateway {gateway!r} is not declared in hub.yaml gateways"
        if site != binding.site:
            return (f"source: gateway {gateway!r} reports for site {binding.site!r} "
                    f"(hub.yaml gateways.{gateway}.site), not {site!r}")
        return None

    def check(self, gateway: str, packet: Packet, received_at: float) -> Admitted | str:
        """The admitted packet with its ordering time, or why it is refused."""
        if packet.type.startswith(HUB_ONLY_PREFIX):
            return f"type: {packet.type!r} is made by the hub only (docs/feed.md)"
        problem = self.source_allowed(gateway, packet.source)
        if problem is None and not self.open:
            problem = _outside(self.gateways[gateway], gateway, packet)
        if problem is not None:
            return problem
        at = parse_time(packet.time)
        if at > received_at + self.max_skew_s:
            return Admitted(received_at, True)
        return Admitted(at, False)

    def trusted_identity(self, gateway: str, obj: Any) -> tuple[str, str, int] | None:
        """`(source, epoch, seq)` of a refused event when every part of it is valid and the
        gateway may speak for that source; None otherwise. Such a refusal is settled, so the
        gateway's acknowledgements go on past it (hub/progress.py)."""
        if not isinstance(obj, dict):
            return None
        source, epoch, sequence = obj.get("source"), obj.get("sourceepoch"), obj.get("sequence")
        if not (isinstance(source, str) and isinstance(epoch, str)
                and isinstance(sequence, str)):
            return None
        if not (_SOURCE.match(source) and _ULID.match(epoch) and _SEQUENCE.match(sequence)):
            return None
        seq = int(sequence)
        if not 1 <= seq <= MAX_INT or self.source_allowed(gateway, source) is not None:
            return None
        return source, epoch, seq


def _outside(binding: GatewayEntry, gateway: str, packet: Packet) -> str | None:
    """Why a packet lies outside what its gateway is declared for, or None."""
    where = f"hub.yaml gateways.{gateway}"
    # Every type a gateway may send has an equipment (sync/packet.py); `check` refused others.
    assert packet.data.equipment is not None
    path = packet.data.equipment.path
    levels = path.split("/")
    if levels[0] != binding.site:
        return f"data.equipment.path: {path!r} is not under site {binding.site!r} ({where}.site)"
    if binding.areas is not None and (len(levels) < 2 or levels[1] not in binding.areas):
        return f"data.equipment.path: {path!r} is not in an allowed area ({where}.areas)"
    if binding.lines is not None and (len(levels) < 3 or levels[2] not in binding.lines):
        return f"data.equipment.path: {path!r} is not on an allowed line ({where}.lines)"
    if binding.equipment is not None and not any(
            path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")
            for prefix in binding.equipment):
        return f"data.equipment.path: {path!r} is under no allowed prefix ({where}.equipment)"
    work_order = packet.data.workOrder
    if (binding.work_orders is not None and work_order is not None
            and not any(fnmatchcase(work_order.id, p) for p in binding.work_orders)):
        return (f"data.workOrder.id: {work_order.id!r} matches no allowed pattern "
                f"({where}.work_orders)")
    return None
