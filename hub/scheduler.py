"""The hub's calendar work: one APScheduler on the hub's event loop runs every periodic job.

APScheduler is for work whose period is a span of clock time (STYLE.md): the retention purge
every hour, the alerts evaluation every `alerts.interval_s`. Each run goes through
`Supervisor.once`, so a job that raises is logged and counted and simply runs again at its next
time. Each job runs at start, then every interval; a run still going when the next is due
makes the scheduler skip that one (one instance at a time, missed runs coalesced), so runs
never overlap. Loops whose period is about latency or liveness (lease renewals, the fan-out's
poll) stay plain asyncio loops on the monotonic clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from hub.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Job:
    """One periodic job. `name` is its id for the scheduler and the supervisor (metrics, logs);
    `tick` is one run; `close` runs once the scheduler has stopped (it waits for a run under
    way and gives back what the job holds, such as its lease)."""

    name: str
    interval_s: float
    tick: Callable[[], Awaitable[object]]
    close: Callable[[], Awaitable[None]]


async def run_jobs(jobs: Sequence[Job], stop: asyncio.Event, supervisor: Supervisor) -> None:
    """Run `jobs` on one scheduler until `stop` is set, then close each."""
    if not jobs:
        return
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
    start = datetime.now(UTC)
    for job in jobs:
        scheduler.add_job(supervisor.once, IntervalTrigger(seconds=job.interval_s),
                          args=[job.name, job.tick], id=job.name, name=f"hub {job.name}",
                          next_run_time=start, coalesce=True, max_instances=1,
                          misfire_grace_time=None)
    scheduler.start()
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=False)
        for job in jobs:
            await job.close()
