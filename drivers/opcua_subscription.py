"""The subscriptions of one OPC UA session, and their notifications turned into sample batches.

asyncua's publish loop only enqueues: a pump task per subscription moves its iterator's events
into one bounded queue, and the driver's task (`Subscriptions.stream`) decodes them. Each burst
(what waits in the queue when the driver wakes, normally one publish response, at most
`BATCH_MAX` events) becomes one list of samples, in arrival order, with one receive time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

from drivers.base import Quality, Sample
from drivers.opcua_counters import OpcUaCounters
from drivers.opcua_nodes import NodeRef, epoch_of, plain, quality_of
from drivers.settings import OpcUaSignal

log = logging.getLogger(__name__)

#: Bound of the driver's notification queue; when full the newest is dropped and counted.
QUEUE_BOUND = 100_000
#: Most samples in one batch: a burst larger than this (after a stall) is handed over in parts.
BATCH_MAX = 2_000

LOST = object()  # queue marker: the session failed
CLOSED = object()  # queue marker: close() was called
_GOOD = Quality.GOOD

Guard = Callable[[Awaitable[Any]], Awaitable[Any]]


class SessionLost(Exception):
    """The session is gone; `reason` says why (`kind: text`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Item:
    """One signal and, once resolved at a connect, its node."""

    signal: OpcUaSignal
    ref: NodeRef
    node_id: ua.NodeId | None = None


def sample_of(name: str, value: ua.DataValue, received: float, mono: float,
              bad: set[str]) -> Sample:
    """A data value as a sample: the status's severity gives the quality, its name the reason;
    a good value takes `name` out of `bad` (the signals last reported bad)."""
    quality, reason = quality_of(value.StatusCode)
    stamp = value.SourceTimestamp or value.ServerTimestamp
    inner = value.Value.Value if value.Value is not None else None
    if quality is _GOOD:
        bad.discard(name)
        return Sample(name, plain(inner), quality, epoch_of(stamp, received), mono)
    shown = plain(inner) if quality is Quality.UNCERTAIN else None
    return Sample(name, shown, quality, epoch_of(stamp, received), mono, reason)


class Subscriptions:
    """The queue between asyncua and the driver, and the subscriptions of each session."""

    def __init__(self, device: str, endpoint: str, stats: OpcUaCounters,
                 bad: set[str]) -> None:
        self.device = device
        self.endpoint = endpoint
        self.stats = stats
        self._bad = bad  # the driver's: signals whose last sample was BAD
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_BOUND)

    def put(self, item: object) -> None:
        """Enqueue an event or a marker (`LOST`, `CLOSED`); never waits, never fails."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if item is LOST or item is CLOSED:
                self._queue.get_nowait()  # markers must land; a data change may go
                self._queue.put_nowait(item)
            self.stats.dropped += 1

    def clear(self) -> None:
        """Forget what a previous session left in the queue."""
        while not self._queue.empty():
            self._queue.get_nowait()

    async def stream(self, client: Client, items: list[Item],
                     guard: Guard) -> AsyncGenerator[list[Sample], None]:
        """One subscription per publishing interval, then sample batches until the session
        ends (`SessionLost`) or `CLOSED` is put."""
        names: dict[int, str] = {}
        groups: dict[float, list[tuple[int, Item]]] = {}
        for handle, item in enumerate(items, start=1):
            names[handle] = item.signal.name
            groups.setdefault(item.signal.interval_s, []).append((handle, item))
        pumps = []
        try:
            for interval, members in groups.items():
                sub = await guard(client.create_subscription(
                    interval * 1000, None, queue_maxsize=QUEUE_BOUND))
                refused = await guard(self._monitor(sub, members))
                if refused:
                    yield refused
                pumps.append(asyncio.create_task(self._pump(sub), name=f"opcua:{self.device}"))
            async for batch in self._drain(names):
                yield batch
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _monitor(self, sub: Subscription, members: list[tuple[int, Item]]) -> list[Sample]:
        """Create the monitored items; a BAD sample for each one the server refuses."""
        requests = []
        for handle, item in members:
            signal = item.signal
            params = ua.MonitoringParameters()
            params.ClientHandle = handle
            sampling = signal.interval_s if signal.sampling_s is None else signal.sampling_s
            params.SamplingInterval = sampling * 1000
            params.QueueSize = signal.queue_size
            params.DiscardOldest = True
            if signal.deadband is not None:
                params.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=ua.DeadbandType.Absolute,
                    DeadbandValue=signal.deadband,
                )
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = ua.ReadValueId(NodeId=item.node_id,
                                                   AttributeId=ua.AttributeIds.Value)
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = params
            requests.append(request)
        results = await sub.create_monitored_items(requests)
        now, mono = time.time(), asyncio.get_running_loop().time()
        bad = []
        for (_, item), result in zip(members, results, strict=True):
            if isinstance(result, ua.StatusCode):
                reason = (f"opcua_status: monitored item for {item.ref.text!r} refused: "
                          f"{result.name}")
                log.error("opcua device %s: %s", self.device, reason,
                          extra={"device": self.device, "address": item.ref.text,
                                 "reason": reason})
                self.stats.error("item_refused")
                bad.append(Sample(item.signal.name, None, Quality.BAD, now, mono, reason))
        self.stats.made(bad)
        return bad

    async def _pump(self, sub: Subscription) -> None:
        """asyncua's side: only move events into the driver's queue."""
        put = self.put
        async for event in sub:
            put(event)

    async def _drain(self, names: dict[int, str]) -> AsyncIterator[list[Sample]]:
        """The driver's side: each burst of queued events decoded into one list of samples.

        The counters move once per burst; a good value without info bits (nearly all) takes
        the short path, anything else `sample_of` (and the Overflow bit is counted).
        """
        loop = asyncio.get_running_loop()
        stats = self.stats
        while True:
            events = await self._burst()
            batch, not_good, end = self._decode(events, names, time.time(), loop.time())
            if end is CLOSED:
                return
            made = len(batch)
            stats.notifications += made
            stats.good_samples += made - not_good
            stats.bad_samples += not_good
            if batch:
                yield batch
            if isinstance(end, SessionLost):
                raise end

    async def _burst(self) -> list[Any]:
        """The next event and whatever waits behind it, at most `BATCH_MAX` in all."""
        queue = self._queue
        events = [await queue.get()]
        if waiting := min(queue.qsize(), BATCH_MAX - 1):
            get = queue.get_nowait
            events += [get() for _ in range(waiting)]
        return events

    def _decode(self, events: list[Any], names: dict[int, str], received: float,
                mono: float) -> tuple[list[Sample], int, object]:
        """The burst's samples in arrival order, how many are not good, and how it ended: None
        (it did not), a `SessionLost`, or `CLOSED` (events after the end are dropped)."""
        batch: list[Sample] = []
        append = batch.append
        bad = self._bad
        good = _GOOD
        not_good = 0
        for event in events:
            if not isinstance(event, DataChangeEvent):
                end = self._end_of(event)
                if end is not None:
                    return batch, not_good, end
                continue
            notification = event.data.monitored_item
            name = names.get(notification.ClientHandle)
            if name is None:
                continue
            value = notification.Value
            status = value.StatusCode
            if status is None or not status.value:  # Good, no info bits
                if bad:
                    bad.discard(name)
                variant = value.Value
                append(Sample(name, plain(None if variant is None else variant.Value),
                              good, epoch_of(value.SourceTimestamp
                                             or value.ServerTimestamp, received), mono))
                continue
            sample = self._flagged(name, value, status.value, received, mono)
            append(sample)
            if sample.quality is not good:
                not_good += 1
        return batch, not_good, None

    def _flagged(self, name: str, value: ua.DataValue, status: int, received: float,
                 mono: float) -> Sample:
        """A value with a status other than plain Good: counted, and decoded by `sample_of`."""
        self.stats.flagged(status)
        sample = sample_of(name, value, received, mono, self._bad)
        if sample.quality is Quality.UNCERTAIN:
            self.stats.uncertain_samples += 1
        return sample

    def _end_of(self, event: object) -> object:
        """What an event other than a data change ends: a `SessionLost`, `CLOSED`, or None."""
        if isinstance(event, StatusChangeEvent):
            self.stats.status_changes += 1
            status = event.notification.Status
            if status is not None and not status.is_good():
                return SessionLost(f"comm_lost: subscription on {self.endpoint} ended: "
                                   f"{status.name}")
            return None
        if event is LOST:
            return SessionLost(f"comm_lost: session with {self.endpoint} lost "
                               "(keep-alive failed)")
        if event is CLOSED:
            return CLOSED
        return None
