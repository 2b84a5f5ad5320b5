"""One webhook endpoint's delivery loop: read the supplier's feed after the endpoint's cursor,
POST the entries its filter takes as one signed CloudEvents batch, and move the cursor (saved
in the hub database) only when the answer is a 2xx. Failures are retried with exponential
backoff and full jitter, the same batch again, so a receiver sees the same positions.

State changes are logged as transitions (STYLE "Errors and logs"): the first failure of an
outage at WARNING; once it has lasted `webhooks.failing_after_s`, the endpoint is failing and
the hub alert is raised: one ERROR line, the `keyop_hub_webhook_failing` gauge and the admin
API's `failing`; INFO when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from common.backoff import Backoff
from hub.webhooks.client import Answer, Poster
from hub.webhooks.cursors import Cursors, CursorSaver, Health
from hub.webhooks.settings import WebhookEndpoint, WebhooksSection
from hub.webhooks.signing import HEADER, signature
from hub.webhooks.source import Entry, FeedReader

log = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# A POST carries at most this many bytes of events (and at least one event, whatever its size).
MAX_BATCH_BYTES = 1 << 20
USER_AGENT = "keyop-hub"


@dataclass(slots=True)
class EndpointState:
    """One endpoint as this process delivers it (counters for /metrics)."""

    cursor: int = 0
    delivered: int = 0  # events answered with a 2xx
    requests: int = 0
    failures: int = 0
    last_status: int | None = None
    last_error: str | None = None
    failing_since: float | None = None  # first failure of the current outage (Unix time)
    failing: bool = False  # failing for webhooks.failing_after_s: the hub alert is up

    def health(self) -> Health:
        return Health(self.failing_since, self.failing, self.last_status, self.last_error)


class Endpoint:
    """The delivery loop of one endpoint. `run` returns when `stop` is set."""

    def __init__(self, supplier: str, name: str, settings: WebhookEndpoint,
                 section: WebhooksSection, *, feed: FeedReader, cursors: Cursors,
                 saver: CursorSaver, poster: Poster, secret: str, offload: Offload[Any]
                 ) -> None:
        self.supplier = supplier
        self.name = name
        self.settings = settings
        self.section = section
        self.feed = feed
        self.cursors = cursors
        self.saver = saver
        self.poster = poster
        self._secret = secret
        self._offload = offload
        self.state = EndpointState()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New entries may be in the feed."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        supplier, name = self.supplier, self.name
        start = 0
        if self.settings.start == "head":
            start = await self._offload(lambda: self.feed.head(supplier))
        cursor = await self._offload(lambda: self.cursors.start(supplier, name, start))
        self.state.cursor = cursor
        while not stop.is_set():
            self._wake.clear()
            entries = await self._offload(
                functools.partial(self.feed.read, supplier, cursor, self.settings.batch))
            if not entries:
                # The deliverer's watch wakes it when its supplier's feed grows.
                await _wait_any(stop, self._wake)
                continue
            chosen, last = self._take(entries)
            if chosen and not await self._deliver(chosen, stop):
                return  # stopping: the cursor stays before the batch
            cursor = last
            await self.saver.save(supplier, name, last)
            self.state.cursor = cursor

    def _take(self, entries: Sequence[Entry]) -> tuple[list[Entry], int]:
        """The entries to send (filtered, up to MAX_BATCH_BYTES) and the last position they
        settle."""
        chosen: list[Entry] = []
        size = 0
        last = entries[0].position
        for entry in entries:
            if self.settings.accepts(entry.type):
                if chosen and size + len(entry.body) > MAX_BATCH_BYTES:
                    break
                chosen.append(entry)
                size += len(entry.body) + 1
            last = entry.position
        return chosen, last

    async def _deliver(self, chosen: list[Entry], stop: asyncio.Event) -> bool:
        """POST the batch until a 2xx (True) or `stop` (False)."""
        body = b"[" + b",".join(entry.body for entry in chosen) + b"]"
        backoff = Backoff(self.section.retry_min_s,
                          max(self.section.retry_min_s, self.section.retry_max_s))
        while not stop.is_set():
            answer = await self.poster.post(self.settings.url, self._headers(chosen, body), body)
            if self._record(answer, len(chosen)):
                await self._offload(functools.partial(
                    self.cursors.save_health, self.supplier, self.name, self.state.health()))
            if answer.ok:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next())
        return False

    def _headers(self, chosen: list[Entry], body: bytes) -> list[tuple[str, str]]:
        return [
            ("Content-Type", BATCH_CONTENT_TYPE),
            ("User-Agent", USER_AGENT),
            (HEADER, signature(self._secret, int(time.time()), body)),
            ("keyop-supplier", self.supplier),
            ("keyop-webhook", self.name),
            ("keyop-feed-first", str(chosen[0].position)),
            ("keyop-feed-last", str(chosen[-1].position)),
            ("keyop-events", str(len(chosen))),
        ]

    def _record(self, answer: Answer, events: int) -> bool:
        """Count one answer; True when the endpoint's health changed (to be saved)."""
        state = self.state
        state.requests += 1
        state.last_status = answer.status
        where = {"supplier": self.supplier, "webhook": self.name, "url": self.settings.url}
        now = time.time()
        if answer.ok:
            state.delivered += events
            if state.failing_since is not None:
                log.info("webhook %s/%s recovered after %.0fs", self.supplier, self.name,
                         now - state.failing_since, extra=where)
            changed = state.failing_since is not None
            state.failing_since, state.failing, state.last_error = None, False, None
            return changed
        state.failures += 1
        state.last_error = answer.error
        changed = False
        if state.failing_since is None:
            state.failing_since, changed = now, True
            log.warning("webhook %s/%s failed, retrying: %s", self.supplier, self.name,
                        answer.error, extra=where)
        if not state.failing and now - state.failing_since >= self.section.failing_after_s:
            state.failing, changed = True, True
            log.error("webhook %s/%s failing for %.0fs (alert): %s", self.supplier, self.name,
                      now - state.failing_since, answer.error, extra=where)
        return changed


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
