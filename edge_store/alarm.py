"""The outbox-full alarm and this process's counters of what the bounds cost.

The alarm goes on when an append meets a full bound or disk (refused, or rows evicted to make
room) and off once appends fit again with the backlog a tenth below where it went on. Only its
transitions are logged (STYLE: transitions, not repetitions).
"""

from __future__ import annotations

import logging

from edge_store.bounds import Bounds, Eviction
from edge_store.store import Store

# The outbox's one logger, whichever of its modules logs.
log = logging.getLogger("edge_store.outbox")


class Alarm:
    """`full` is the alarm; the counters are for stats and metrics."""

    def __init__(self, store: Store, bounds: Bounds) -> None:
        self.store = store
        self.bounds = bounds
        self.evicted_packets = 0
        self.refused_appends = 0
        self.disk_full = 0
        self.full = False
        self._pending_at_alarm = 1

    def refused(self, what: str) -> None:
        """An append was refused (nothing stored)."""
        self.refused_appends += 1
        self._set(True, what)

    def evicted(self, evictions: list[Eviction]) -> None:
        """A commit evicted `evictions` to make room."""
        total = sum(e.count for e in evictions)
        self.evicted_packets += total
        self._set(True, "evicting")
        log.warning(
            "outbox full: evicted %d packets in %d range(s), %s; gap records sent to the hub",
            total, len(evictions), ", ".join(f"{e.first}..{e.last}" for e in evictions[:5]),
            extra={"evicted": total, "reason": evictions[0].reason,
                   "policy": self.bounds.policy, "evicted_total": self.evicted_packets},
        )

    def appended(self) -> None:
        """Rows were appended without evicting: clear the alarm once the backlog has shrunk."""
        if self.full and self.store.pending_count < 0.9 * self._pending_at_alarm:
            self._set(False, "")

    def _set(self, on: bool, what: str) -> None:
        store = self.store
        if on:
            self._pending_at_alarm = max(1, store.pending_count)
        if on and not self.full:
            log.error(
                "ALARM outbox full (%s): policy %s", what, self.bounds.policy,
                extra={"path": str(store.path), "pending": store.pending_count,
                       "pending_bytes": store.pending_bytes,
                       "max_packets": self.bounds.max_packets,
                       "max_bytes": self.bounds.max_bytes},
            )
        elif not on and self.full:
            log.info("outbox alarm cleared: appends fit again",
                     extra={"pending": store.pending_count})
        self.full = on
