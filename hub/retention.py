"""Retention: dead letters and audit log rows older than hub.yaml `retention:` are deleted.

A calendar job (hub/scheduler.py: APScheduler on the hub's event loop; the first run at
start). The purge runs in a worker thread and deletes in chunks of `CHUNK` rows, one short
transaction each, so it never holds the database's write lock for long and ingest commits slip
in between. One hub worker purges at a time (the `retention` lease); the purge is idempotent,
so a lease handed over mid-purge only means the next holder finds less to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid

from sqlalchemy.exc import SQLAlchemyError

from hub.config import HubConfig
from hub.scheduler import Job, run_jobs
from hub.store import Store
from hub.supervisor import Supervisor

log = logging.getLogger(__name__)

LEASE = "retention"
JOB = "retention"
CHUNK = 1_000
_DAY_S = 86_400.0


class Retention:
    """The purge job. `purge` is synchronous (a worker thread); `job` is its schedule."""

    def __init__(self, config: HubConfig, store: Store) -> None:
        self.settings = config.retention
        self.store = store
        self.holder = f"{config.hub.id}:retention:{uuid.uuid4().hex[:12]}"
        # Rows deleted, per table, since this process started (metrics).
        self.deleted: dict[str, int] = {"dead_letters": 0, "audit_log": 0}
        self.runs = 0
        self._stopping = threading.Event()
        self._busy = asyncio.Lock()

    def limits(self) -> dict[str, float]:
        """Each table with a retention, and its age limit in seconds (0 or null: none)."""
        days = {"dead_letters": self.settings.dead_letters_days,
                "audit_log": self.settings.audit_days}
        return {table: d * _DAY_S for table, d in days.items() if d}

    def purge(self, now: float | None = None) -> dict[str, int]:
        """Delete what is past its retention, chunk by chunk, unless another worker holds the
        lease; returns rows deleted per table. Stops between chunks when the hub stops."""
        limits = self.limits()
        done = {table: 0 for table in limits}
        if not limits:
            return done
        ttl = max(2 * self.settings.interval_s, 60.0)
        if not self.store.try_lease(LEASE, self.holder, ttl):
            return done
        now = time.time() if now is None else now
        for table, keep_s in limits.items():
            while not self._stopping.is_set():
                gone = self.store.purge(table, now - keep_s, CHUNK)
                done[table] += gone
                self.deleted[table] += gone
                if gone < CHUNK:
                    break
        self.runs += 1
        if any(done.values()):
            log.info("retention: old rows deleted", extra=done)
        return done

    def job(self) -> Job:
        """The purge as a calendar job (hub/scheduler.py), every `retention.interval_s`."""
        self._stopping.clear()
        return Job(JOB, self.settings.interval_s, self._tick, self._close)

    async def run(self, stop: asyncio.Event, supervisor: Supervisor) -> None:
        """Schedule the purge alone (first run now) until `stop`; nothing when all is kept."""
        await run_jobs([self.job()] if self.limits() else [], stop, supervisor)

    async def _tick(self) -> None:
        async with self._busy:
            if not self._stopping.is_set():
                await asyncio.to_thread(self.purge)

    async def _close(self) -> None:
        self._stopping.set()
        async with self._busy:  # a purge under way ends at its next chunk
            pass
        with contextlib.suppress(SQLAlchemyError):  # it expires by itself
            await asyncio.to_thread(self.store.release_lease, LEASE, self.holder)
