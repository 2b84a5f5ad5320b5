"""Webhook delivery of one hub process: the `webhooks` lease and every endpoint's loop.

Only a process with the fan-out role delivers webhooks, and of those one at a time: the one
holding the `webhooks` lease (hub/store.py, as for fan-out and alerts), so each endpoint has
one deliverer across hub processes. The lease is renewed while held; when it is lost the loops
stop (a POST in flight may still land: at least once, the receiver dedupes on `id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from hub.config import HubConfig, read_secret
from hub.identity import dead_here, holder_name
from hub.store import Store
from hub.webhooks.client import Poster
from hub.webhooks.cursors import Cursors, CursorSaver
from hub.webhooks.endpoint import Endpoint
from hub.webhooks.source import FeedReader

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE = "webhooks"
# Endpoints are woken at most this often: a wake then carries several ingest commits, so a
# POST carries more events and the feed is read less (at the cost of this much latency).
COALESCE_S = 0.05
# After an unexpected failure, one endpoint's loop starts again this long after (doubling up
# to the maximum while it keeps failing); the other endpoints go on meanwhile.
RESTART_MIN_S, RESTART_MAX_S = 1.0, 60.0
LEASE_TTL_S = 15.0
# Threads of webhook delivery's blocking reads and cursor saves: its own, so 50 endpoints
# never queue ingest's work behind them (give it a store with a pool of as many connections).
THREADS = 4


class Deliverer:
    """Every configured endpoint of this hub. Build it at start: an unreadable secret file is
    a HubConfigError then, not later."""

    def __init__(self, config: HubConfig, store: Store, feed: FeedReader, *,
                 appended: Callable[[float], Awaitable[None]] | None = None,
                 holder: str | None = None) -> None:
        self.section = section = config.webhooks
        self.store = store
        self.holder = holder or holder_name(config.hub.id)
        self.feed = feed
        self.cursors = cursors = Cursors(self.store)
        saver = CursorSaver(cursors, self._offload)
        found = [(supplier, name, endpoint)
                 for supplier, settings in config.suppliers.items()
                 for name, endpoint in settings.webhooks.items()]
        self._executor = ThreadPoolExecutor(max_workers=THREADS,
                                            thread_name_prefix="keyop-webhooks")
        self.endpoints = [
            Endpoint(supplier, name, endpoint, section, feed=feed, cursors=cursors, saver=saver,
                     poster=Poster(section), secret=read_secret(endpoint.secret_file, private=True),
                     offload=self._offload)
            for supplier, name, endpoint in found]
        # Returns when this process appends to a feed, or after its timeout (hub/feed.py
        # `Feed.wait`); without it, endpoints learn of new entries by `wake` and polling.
        self._appended = appended
        self._lease_until = 0.0

    @property
    def holds_lease(self) -> bool:
        """Whether this process delivers webhooks now (metrics)."""
        return time.monotonic() < self._lease_until

    def wake(self) -> None:
        """New feed entries were appended."""
        for endpoint in self.endpoints:
            endpoint.wake()

    async def _offload(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver while holding the lease, until `stop` is set."""
        try:
            while not stop.is_set():
                if await self._lease():
                    held = asyncio.Event()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._keep(stop, held))
                        group.create_task(self._watch(held))
                        for endpoint in self.endpoints:
                            group.create_task(_isolated(endpoint, held))
                if not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), LEASE_TTL_S / 3)
        finally:
            if self._lease_until:
                self._lease_until = 0.0
                with contextlib.suppress(SQLAlchemyError):  # it expires by itself
                    await self._offload(functools.partial(
                        self.store.release_lease, LEASE, self.holder))

    async def close(self) -> None:
        """Close the HTTP connections and the threads (after `run` has returned)."""
        for endpoint in self.endpoints:
            await endpoint.poster.close()
        self._executor.shutdown(wait=False)

    async def _lease(self) -> bool:
        held = await self._offload(self._take)
        if held and not self._lease_until:
            log.info("webhooks lease taken", extra={"holder": self.holder,
                                                    "endpoints": len(self.endpoints)})
        self._lease_until = time.monotonic() + LEASE_TTL_S if held else 0.0
        return held

    def _take(self) -> bool:
        """Take or renew the lease; take it over at once from a holder on this host that is
        gone (a hub killed and restarted need not wait for the lease to expire)."""
        store = self.store
        if store.try_lease(LEASE, self.holder, LEASE_TTL_S):
            return True
        other = store.lease_holder(LEASE)
        if other is None or not dead_here(other):
            return False
        taken = store.take_over_lease(LEASE, other, self.holder, LEASE_TTL_S)
        if taken:
            log.info("webhooks lease taken over from a process that is gone",
                     extra={"previous": other})
        return taken

    async def _watch(self, held: asyncio.Event) -> None:
        """Wake the endpoints whose supplier's feed grew: after each append of this process
        (at most every COALESCE_S, so one wake carries several commits), and every
        `webhooks.poll_s` for what other hub processes append."""
        suppliers = sorted({endpoint.supplier for endpoint in self.endpoints})
        poll_s = self.section.poll_s
        while not held.is_set():
            heads = await self._offload(functools.partial(self.feed.heads, suppliers))
            for endpoint in self.endpoints:
                if heads.get(endpoint.supplier, 0) > endpoint.state.cursor:
                    endpoint.wake()
            if self._appended is not None:
                await self._appended(poll_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.wait(), poll_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.wait(), COALESCE_S)

    async def _keep(self, stop: asyncio.Event, held: asyncio.Event) -> None:
        """Renew the lease every third of its time; set `held` (the loops' stop) when the hub
        stops or the lease is lost."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LEASE_TTL_S / 3)
                if not stop.is_set() and not await self._lease():
                    log.warning("webhooks lease lost", extra={"holder": self.holder})
                    return
        finally:
            held.set()


async def _isolated(endpoint: Endpoint, held: asyncio.Event) -> None:
    """`endpoint.run` until `held` is set; an unexpected error (a database error reading the
    feed, a bug) restarts this endpoint's loop from its saved cursor after a pause, and never
    cancels the other endpoints' deliveries."""
    delay = RESTART_MIN_S
    while not held.is_set():
        try:
            await endpoint.run(held)
            return
        except Exception:
            log.exception("webhook %s/%s: delivery loop failed; restarting it in %.0f s",
                          endpoint.supplier, endpoint.name, delay,
                          extra={"supplier": endpoint.supplier, "endpoint": endpoint.name})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.wait(), delay)
        delay = min(delay * 2, RESTART_MAX_S)
