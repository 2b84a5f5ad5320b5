"""The gateway as a supervised service: its one-line state, its readiness, how it stops.

systemd reads the state through the notify protocol (`common.sdnotify`), a monitor through
`/api/status`, `/api/health` and `/api/ready` (gateway/api.py); both come from here so they
always agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sync.packet import format_time

if TYPE_CHECKING:
    from gateway.runtime import Gateway


@dataclass(frozen=True, slots=True)
class StartBacklog:
    """What the outbox held when the daemon started (after a power cut: what it recovered)."""

    pending: int
    last_seq: int
    oldest_created: float | None
    """When the oldest of those rows was committed (Unix time)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending, "last_seq": self.last_seq,
            "oldest": format_time(self.oldest_created) if self.oldest_created else None,
        }


def pending(gateway: Gateway) -> int:
    """Rows in the outbox not yet acknowledged (kept in memory by the outbox)."""
    return gateway.outbox.pending_count if gateway.outbox is not None else 0


def devices_up(gateway: Gateway) -> int:
    return sum(1 for driver in gateway.drivers if gateway.device_up.get(driver.name))


def status_line(gateway: Gateway) -> str:
    """E.g. `3/3 devices up, 12 pending, hub acked 10,482, broker connected`."""
    uplink = gateway.uplink
    parts = [
        f"{devices_up(gateway)}/{len(gateway.drivers)} devices up",
        f"{pending(gateway):,} pending",
        f"hub acked {uplink.acked_seq if uplink else 0:,}",
        "broker connected" if uplink is not None and uplink.connected else "broker down",
    ]
    backlog = gateway.backlog_at_start
    # Until the hub has what the outbox held at start, say where that backlog came from.
    if backlog is not None and backlog.pending and uplink is not None \
            and uplink.acked_seq < backlog.last_seq:
        since = format_time(backlog.oldest_created) if backlog.oldest_created else "?"
        parts.append(f"{backlog.pending:,} pending at start since {since}")
    if gateway.stopping:
        parts.insert(0, "stopping")
    return ", ".join(parts)


def not_ready(gateway: Gateway) -> list[str]:
    """Why the gateway is not ready (empty: ready): outbox open, drivers started, broker
    connected, not stopping."""
    reasons = []
    if gateway.outbox is None:
        reasons.append("outbox not open")
    if not gateway.drivers_started:
        reasons.append("drivers not started")
    uplink = gateway.uplink
    if uplink is None or not uplink.connected:
        reasons.append("broker not connected")
    if gateway.stopping:
        reasons.append("stopping")
    return reasons


def uptime_s(gateway: Gateway) -> float:
    return round(time.time() - gateway.started_at, 1)


class StopSignals:
    """The first SIGTERM asks for a graceful stop, the second for an immediate one."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.now = asyncio.Event()

    def signal(self) -> None:
        if self.stop.is_set():
            self.now.set()
        self.stop.set()


async def bounded(work: Awaitable[None], timeout_s: float, now: asyncio.Event) -> bool:
    """Run `work` until it ends, `timeout_s` passes or `now` is set; False when cut short
    (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    hurry = asyncio.ensure_future(now.wait())
    try:
        await asyncio.wait({task, hurry}, timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurry.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
