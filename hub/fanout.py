"""Fan-out to suppliers over MQTT (delivery guarantee 5): it reads each supplier's feed
(hub/feed.py), the log every channel reads, and publishes its entries as they are.

Each supplier has a cursor (`supplier_cursors.position`, a position in its feed). One task
reads every supplier's entries after its cursor, publishes them to the supplier's events topic
(alerts to its alerts topic) with the retained state of the operations they move, and
advances a supplier's cursor only past entries whose messages the broker has PUBACKed. Cursor
moves are saved at most once a second (`CURSOR_SAVE_S`) and when the fan-out stops. A crash
before a move is saved means a resend with the same `id`, which suppliers dedupe on.

Publishing is pipelined: up to `window` steps are in flight at once, so the next one is read
and handed to paho while the broker still acknowledges the previous ones; steps settle in
order. When a supplier's message is refused or not acknowledged in time, reading stops for
that supplier, what is in flight settles (its cursor stays before its first unacknowledged
message) and the next pass resends from its cursor; the other suppliers go on.

Only one hub worker fans out at a time: the worker holding the `fanout` lease (a row in the
shared database, renewed while it works, taken over when it expires). Other workers ingest; a
worker may also be configured not to fan out (`hub.fanout: false`) or not to ingest
(`hub.ingest: false`). Appends in this process wake the fan-out at once; what other processes
append is found within `poll_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from common.mqtt_properties import packed_properties
from hub import routing
from hub.badrows import BAD_ROW, reason
from hub.config import HubConfig
from hub.feed import Feed, FeedEntry
from hub.log_throttle import RepeatedWarnings
from hub.mqtt import HubMqtt
from hub.state import CLOSED_STATES, state_document
from hub.store import Store
from sync import topics
from sync.packet import BATCH_CONTENT_TYPE, CONTENT_TYPE, MAX_EVENT_BYTES

log = logging.getLogger(__name__)

STATE_EXPIRY_S = 30 * 86_400
STATE_CONTENT_TYPE = "application/json"
LEASE = "fanout"
# A batch message stays under the packet size cap (docs/packet.md, "Sizes": 64 KiB per
# message, one event or a batch).
_BATCH_BYTES = MAX_EVENT_BYTES - 1024
LEASE_TTL_S = 15.0
# Cursor moves are saved at most this often (and when the fan-out stops). Each save is a
# durable commit that ingest's commits would queue behind (one per fan-out step, which at a
# low rate is one per packet); a crash loses at most this much cursor progress, i.e.
# resends that suppliers recognise by the event id.
CURSOR_SAVE_S = 1.0

Sent = dict[str, list[tuple[int, asyncio.Future[None]]]]


@dataclass(slots=True)
class _Step:
    """One step in flight: what was sent to whom (by position), and the last position read
    of each supplier."""

    last: dict[str, int]
    sent: Sent = field(default_factory=dict)

    def futures(self) -> list[asyncio.Future[None]]:
        return [f for pairs in self.sent.values() for _, f in pairs]


class FanOut:
    """The fan-out task. The feed wakes it after every append of this process; a timer
    covers what other processes append (`poll_s`) and the retry after a failure (`idle_s`)."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        mqtt: HubMqtt,
        *,
        batch: int = 500,
        window: int = 4,
        puback_timeout_s: float = 30.0,
        poll_s: float = 0.25,
        idle_s: float = 2.0,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.mqtt = mqtt
        self.feed = Feed(store)
        self.batch = batch
        self.window = window
        self.puback_timeout_s = puback_timeout_s
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.holder = holder or f"{config.hub.id}:{uuid.uuid4().hex[:12]}"
        self.published = 0
        self.failed = 0
        # Feed entries published (each once per step, whatever the message count).
        self.packets = 0
        # Retained states not published for a stored value they cannot use.
        self.skipped = 0
        self._warnings = RepeatedWarnings(log, window_s=300.0)
        self._lease_until = 0.0
        # Cursor moves not yet saved, and when the last save was (monotonic).
        self._unsaved: dict[str, int] = {}
        self._saved_at = 0.0

    @property
    def holds_lease(self) -> bool:
        """Whether this process holds the fan-out lease now (metrics)."""
        return time.monotonic() < self._lease_until

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out until `stop` is set (finishing the batches in flight)."""
        try:
            while not stop.is_set():
                ok = await self._lease() and await self.pump(stop)
                # Idle, not the lease holder, or a supplier's publish failed: wait for new
                # entries (only when healthy) or the slow timer.
                waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
                # Healthy, the feeds are read again soon: entries that other hub processes
                # append do not wake this one. After a failure, the resend waits longer.
                timeout = self.poll_s if ok else self.idle_s
                if self._unsaved:
                    timeout = min(timeout, max(0.0, self._saved_at + CURSOR_SAVE_S
                                               - time.monotonic()))
                if ok:
                    waiters.append(asyncio.ensure_future(self.feed.wait(timeout)))
                _, pending = await asyncio.wait(
                    waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                await self._save_cursors()
        finally:
            await self._save_cursors(force=True)
            if self._lease_until:
                # Forgotten first: a restarted run must take the lease again, not trust it.
                self._lease_until = 0.0
                with contextlib.suppress(SQLAlchemyError):  # it expires by itself
                    await asyncio.to_thread(self.store.release_lease, LEASE, self.holder)

    async def _lease(self) -> bool:
        """Hold (or renew) the fan-out lease; renewed when a third of it has gone."""
        now = time.monotonic()
        if now < self._lease_until - 2 * LEASE_TTL_S / 3:
            return True
        held = await asyncio.to_thread(self.store.try_lease, LEASE, self.holder, LEASE_TTL_S)
        if held and not self._lease_until:
            log.info("fan-out lease taken", extra={"holder": self.holder})
        self._lease_until = now + LEASE_TTL_S if held else 0.0
        return held

    async def pump(self, stop: asyncio.Event) -> bool:
        """Send every feed's entries after its cursor, pipelined; True when all was
        acknowledged."""
        suppliers = list(self.config.suppliers)
        if not suppliers:
            return True
        cursors = await asyncio.to_thread(self.store.get_cursors, suppliers)
        for supplier, position in self._unsaved.items():  # ours, newer than the database's
            cursors[supplier] = max(cursors.get(supplier, position), position)
        reading = dict(cursors)
        inflight: deque[_Step] = deque()
        blocked: set[str] = set()
        while True:
            if (len(blocked) < len(suppliers) and not stop.is_set()
                    and len(inflight) < self.window and await self._lease()):
                entries = await asyncio.to_thread(self._read, reading, blocked)
                if entries:
                    inflight.append(await self._send(entries))
                    reading.update(inflight[-1].last)
                    while inflight and all(f.done() for f in inflight[0].futures()):
                        await self._settle(inflight.popleft(), cursors, blocked)
                    continue
            if not inflight:
                return not blocked
            # The window is full, nothing is left to read, or we are stopping or failing:
            # wait for the oldest step, then settle it.
            oldest = inflight[0]
            pending = [f for f in oldest.futures() if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.puback_timeout_s)
            await self._settle(inflight.popleft(), cursors, blocked)

    def _read(self, reading: dict[str, int], blocked: set[str]
              ) -> dict[str, list[FeedEntry]]:
        """The next entries of each feed that has some past `reading` (one read of the heads,
        then one per such feed), leaving out `blocked` suppliers."""
        heads = self.feed.heads(reading)
        return {supplier: entries for supplier, head in heads.items()
                if head > reading[supplier] and supplier not in blocked
                and (entries := self.feed.read(supplier, reading[supplier], self.batch))}

    async def _settle(self, step: _Step, cursors: dict[str, int], blocked: set[str]) -> None:
        # A supplier that failed in an earlier batch must not move past its failure.
        sent = {s: pairs for s, pairs in step.sent.items() if s not in blocked}
        advanced, acknowledged, failures = settle_cursors(cursors, sent, step.last)
        self.published += acknowledged
        for supplier, pk, error in failures:
            self.failed += 1
            blocked.add(supplier)
            log.warning("fan-out not acknowledged, will resend: %s", error,
                        extra={"supplier": supplier, "position": pk})
        self.mqtt.forget(step.futures())
        if advanced:
            cursors.update(advanced)
            self._unsaved.update(advanced)
            await self._save_cursors()

    async def _save_cursors(self, *, force: bool = False) -> None:
        """Persist the cursor moves not yet saved, when `CURSOR_SAVE_S` has passed (or now)."""
        if not self._unsaved or (not force
                                 and time.monotonic() - self._saved_at < CURSOR_SAVE_S):
            return
        moves, self._unsaved = self._unsaved, {}
        try:
            await asyncio.to_thread(self.store.set_cursors, moves)
        except BaseException:
            # Kept for the next try (a database error, or cancelled while stopping).
            self._unsaved = {**moves, **self._unsaved}
            raise
        self._saved_at = time.monotonic()

    async def _send(self, entries: dict[str, list[FeedEntry]]) -> _Step:
        """Publish one step's entries (without waiting for PUBACKs)."""
        step = _Step({s: found[-1].position for s, found in entries.items()},
                     {s: [] for s in entries})
        pairs = {(e.work_order, e.operation) for found in entries.values() for e in found
                 if e.work_order and e.operation and e.packet_pk is not None
                 and e.type.startswith("keyop.operation.")}
        states = await asyncio.to_thread(self.store.states, pairs) if pairs else {}
        for supplier, found in entries.items():
            sent = step.sent[supplier]
            batched: dict[str, list[FeedEntry]] = {}
            batch = self.config.suppliers[supplier].batch
            for entry in found:
                if entry.type.startswith("keyop.alert."):
                    sent.append((entry.position, self.mqtt.publish(
                        topics.sup_alerts(supplier), entry.body,
                        properties=_properties(entry))))
                elif batch:
                    batched.setdefault(entry.work_order or "", []).append(entry)
                else:
                    sent.append((entry.position, self.mqtt.publish(
                        _events_topic(supplier, entry.work_order or ""), entry.body,
                        properties=_properties(entry))))
                state = states.get((entry.work_order or "", entry.operation or ""))
                # Only the newest event of the operation sets the retained state, whatever the
                # arrival order (guarantee 6).
                if state is not None and state.last_pk == entry.packet_pk:
                    self._state(sent, supplier, entry, state)
            for work_order, items in batched.items():
                self._publish_batches(sent, supplier, work_order, items)
            if batched:
                # settle_cursors reads each supplier's messages in position order.
                sent.sort(key=lambda pair: pair[0])
            self.packets += len(found)
        return step

    def _state(self, sent: list[tuple[int, asyncio.Future[None]]], supplier: str,
               entry: FeedEntry, state: Any) -> None:
        try:
            sent.append((entry.position, self._publish_state(supplier, state)))
        except BAD_ROW as error:  # the event went out; its state row is odd
            self.skipped += 1
            self._warnings.warning(
                f"state:{entry.work_order}/{entry.operation}", "fan-out: retained "
                "state of work order %s operation %s not published: %s",
                entry.work_order, entry.operation, reason(error),
                extra={"work_order": entry.work_order, "operation": entry.operation})

    def _publish_batches(self, sent: list[tuple[int, asyncio.Future[None]]], supplier: str,
                         work_order: str, items: list[FeedEntry]) -> None:
        """One CloudEvents batch message per run of entries under the size cap."""
        topic = _events_topic(supplier, work_order)
        start = 0
        while start < len(items):
            size, end = 2, start
            while end < len(items) and (end == start or size + len(items[end].body) + 1
                                        <= _BATCH_BYTES):
                size += len(items[end].body) + 1
                end += 1
            chunk = items[start:end]
            first, last = chunk[0], chunk[-1]
            props = packed_properties(BATCH_CONTENT_TYPE, [
                ("sequence", _sequence_of(first.body)), ("sequence", _sequence_of(last.body)),
                ("position", str(first.position)), ("position", str(last.position))])
            future = self.mqtt.publish(topic, b"[" + b",".join(i.body for i in chunk) + b"]",
                                       properties=props)
            sent.extend((i.position, future) for i in chunk)
            start = end

    def _publish_state(self, supplier: str, state: Any) -> asyncio.Future[None]:
        topic = topics.sup_state(supplier, state.work_order, state.operation)
        if state.state in CLOSED_STATES:
            # docs/packet.md: cleared (an empty retained message) when the operation closes; its
            # final state stays readable through the API.
            return self.mqtt.publish(topic, b"", retain=True)
        document = state_document(state)
        document["station"] = routing.station_name(document["station"],
                                                   self.config.suppliers[supplier])
        payload = json.dumps(document, separators=(",", ":")).encode()
        return self.mqtt.publish(topic, payload, retain=True, properties=_STATE_PROPERTIES)


_STATE_PROPERTIES = packed_properties(STATE_CONTENT_TYPE, expiry_s=STATE_EXPIRY_S)
_SEQUENCE = b'"sequence":"'


def _sequence_of(body: bytes) -> str:
    """The `sequence` of a feed entry's JSON (the redaction writes it as the envelope puts
    it, 20 digits), without parsing the whole event."""
    at = body.find(_SEQUENCE)
    if at < 0:
        return ""
    start = at + len(_SEQUENCE)
    return body[start:body.find(b'"', start)].decode()


def _properties(entry: FeedEntry) -> Any:
    """One event's MQTT 5 properties: its id, type, sequence and feed position."""
    return packed_properties(CONTENT_TYPE, [
        ("id", entry.event_id), ("type", entry.type), ("sequence", _sequence_of(entry.body)),
        ("position", str(entry.position))])
# A supplier's events topic for a work order, checked and built once while the order runs
# rather than for every message.
_events_topic = functools.lru_cache(maxsize=4096)(topics.sup_events)


def settle_cursors(
    cursors: dict[str, int], sent: Sent, last: dict[str, int]
) -> tuple[dict[str, int], int, list[tuple[str, int, str]]]:
    """Cursor moves after one step: each supplier up to just before its first message the
    broker did not acknowledge, or to its `last` position read when it acknowledged them all.

    `sent` lists each supplier's `(position, future)` in position order. Returns the new
    cursors of the suppliers that moved, the number of acknowledged messages (a batch message
    once), and one failure per supplier that has any, as `(supplier, position, error)`.
    """
    advanced: dict[str, int] = {}
    # Messages, not events: the events of a CloudEvents batch share one message (and future).
    acknowledged: set[int] = set()
    failures: list[tuple[str, int, str]] = []
    for supplier, pairs in sent.items():
        first_bad: tuple[str, int, str] | None = None
        for position, future in pairs:
            if future.done() and not future.cancelled() and future.exception() is None:
                acknowledged.add(id(future))
            elif first_bad is None:
                error = future.exception() if future.done() and not future.cancelled() else None
                first_bad = (supplier, position, str(error or "no PUBACK in time"))
        target = last[supplier]
        if first_bad is not None:
            failures.append(first_bad)
            target = first_bad[1] - 1
        if target > cursors.get(supplier, 0):
            advanced[supplier] = target
    return advanced, len(acknowledged), failures
