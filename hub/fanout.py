"""Fan-out to suppliers (delivery guarantee 5): the stored packet log is the hub's outbox.

Each supplier has a cursor (`supplier_cursors.last_pk`). One task reads packets after the lowest
cursor, routes each, publishes the redacted copy to the supplier's events topic and the retained
state to its state topic, and advances a supplier's cursor only past packets whose messages the
broker has PUBACKed. Cursor moves are saved at most once a second (`CURSOR_SAVE_S`) and when the
fan-out stops. A crash before a move is saved means a resend with the same `id`, which suppliers
dedupe on.

Publishing is pipelined: up to `window` batches are in flight at once, so the next batch is
read, routed and handed to paho while the broker still acknowledges the previous ones; batches
settle in order. When a message is refused or not acknowledged in time, reading stops, what is
in flight settles (the failing supplier's cursor stays before its first unacknowledged message)
and the next pass resends from the cursors.

Only one hub worker fans out at a time: the worker holding the `fanout` lease (a row in the
shared database, renewed while it works, taken over when it expires). Other workers ingest; a
worker may also be configured not to fan out (`hub.fanout: false`) or not to ingest
(`hub.ingest: false`).

A new supplier (no cursor yet) starts at the head of the log: it gets what arrives from now
on, plus the retained state of every operation that moves; history before it joined is there to
read through the API's cursor feed (`GET /v1/events?after=0`), not pushed at it over MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from sqlalchemy.exc import SQLAlchemyError

from common.mqtt_properties import packed_properties
from hub import routing
from hub.badrows import BAD_ROW, reason
from hub.config import HubConfig
from hub.log_throttle import RepeatedWarnings
from hub.mqtt import HubMqtt
from hub.state import CLOSED_STATES, state_document
from hub.store import Store, StoredPacket
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
# Events this worker just stored, kept parsed for the fan-out that follows right behind
# (it would otherwise parse each body again). Bounded: a fan-out far behind reads bodies.
_RECENT_EVENTS = 5_000

Sent = dict[str, list[tuple[int, asyncio.Future[None]]]]
# {work order: suppliers} -> {(supplier, work order): order object} (hub/orders.py).
OrderDocuments = Callable[[Mapping[str, Iterable[str]]], dict[tuple[str, str], dict[str, Any]]]


@dataclass(slots=True)
class _Step:
    """One batch in flight: what was sent to whom, and the last pk read."""

    last_pk: int
    sent: Sent = field(default_factory=dict)

    def futures(self) -> list[asyncio.Future[None]]:
        return [f for pairs in self.sent.values() for _, f in pairs]


class FanOut:
    """The fan-out task. `wake()` after every store commit of this process; a timer covers
    what other processes store (`poll_s`) and the retry after a failure (`idle_s`)."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        mqtt: HubMqtt,
        *,
        router: Callable[[], routing.Router] | None = None,
        batch: int = 500,
        window: int = 4,
        puback_timeout_s: float = 30.0,
        poll_s: float = 0.25,
        idle_s: float = 2.0,
        holder: str | None = None,
        orders: OrderDocuments | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.mqtt = mqtt
        fixed = routing.Router(config)
        self.router = router or (lambda: fixed)
        self.batch = batch
        self.window = window
        self.puback_timeout_s = puback_timeout_s
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.holder = holder or f"{config.hub.id}:{uuid.uuid4().hex[:12]}"
        # The order objects to retain beside moved operations' states (hub/orders.py).
        self.orders = orders
        self.published = 0
        self.failed = 0
        self.packets = 0
        # Stored rows skipped for every supplier: a body that cannot be parsed or routed.
        self.skipped = 0
        self._warnings = RepeatedWarnings(log, window_s=300.0)
        self._wake = asyncio.Event()
        self._lease_until = 0.0
        self._recent: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # Cursor moves not yet saved, and when the last save was (monotonic).
        self._unsaved: dict[str, int] = {}
        self._saved_at = 0.0

    @property
    def holds_lease(self) -> bool:
        """Whether this process holds the fan-out lease now (metrics)."""
        return time.monotonic() < self._lease_until

    def remember(self, stored: list[tuple[int, dict[str, Any]]]) -> None:
        """Events just committed by this worker, `(pk, event)`: the next step takes them
        from here instead of parsing their stored bodies."""
        recent = self._recent
        recent.update(stored)
        while len(recent) > _RECENT_EVENTS:
            recent.popitem(last=False)

    def wake(self) -> None:
        """New packets were committed."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out until `stop` is set (finishing the batches in flight)."""
        try:
            while not stop.is_set():
                self._wake.clear()
                ok = await self._lease() and await self.pump(stop)
                # Idle, not the lease holder, or a supplier's publish failed: wait for new
                # packets (only when healthy) or the slow timer.
                waiters = [asyncio.ensure_future(stop.wait())]
                if ok:
                    waiters.append(asyncio.ensure_future(self._wake.wait()))
                # Healthy, the log is read again soon: packets that other hub processes stored
                # do not wake this one. After a failure, the resend waits longer.
                timeout = self.poll_s if ok else self.idle_s
                if self._unsaved:
                    timeout = min(timeout, max(0.0, self._saved_at + CURSOR_SAVE_S
                                               - time.monotonic()))
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
        """Send everything after the cursors, pipelined; True when all was acknowledged."""
        suppliers = list(self.config.suppliers)
        if not suppliers:
            return True
        cursors = await asyncio.to_thread(self.store.get_cursors, suppliers)
        for supplier, pk in self._unsaved.items():  # ours, newer than the database's
            cursors[supplier] = max(cursors.get(supplier, pk), pk)
        read_pk = min(cursors.values())
        inflight: deque[_Step] = deque()
        blocked: set[str] = set()
        while True:
            if (not blocked and not stop.is_set() and len(inflight) < self.window
                    and await self._lease()):
                rows = await asyncio.to_thread(self.store.packets_after, read_pk, self.batch)
                if rows:
                    inflight.append(await self._send(rows, cursors))
                    read_pk = rows[-1].pk
                    while inflight and all(f.done() for f in inflight[0].futures()):
                        await self._settle(inflight.popleft(), cursors, blocked)
                    continue
            if not inflight:
                return not blocked
            # The window is full, nothing is left to read, or we are stopping or failing:
            # wait for the oldest batch, then settle it.
            oldest = inflight[0]
            pending = [f for f in oldest.futures() if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.puback_timeout_s)
            await self._settle(inflight.popleft(), cursors, blocked)

    async def _settle(self, step: _Step, cursors: dict[str, int], blocked: set[str]) -> None:
        # A supplier that failed in an earlier batch must not move past its failure.
        sent = {s: pairs for s, pairs in step.sent.items() if s not in blocked}
        advanced, acknowledged, failures = settle_cursors(cursors, sent, step.last_pk)
        self.published += acknowledged
        for supplier, pk, error in failures:
            self.failed += 1
            blocked.add(supplier)
            log.warning("fan-out not acknowledged, will resend: %s", error,
                        extra={"supplier": supplier, "pk": pk})
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

    async def _send(self, rows: list[StoredPacket], cursors: dict[str, int]) -> _Step:
        """Route and publish one batch (without waiting for PUBACKs)."""
        step = _Step(rows[-1].pk, {s: [] for s in self.config.suppliers})
        pairs = {(r.work_order, r.operation) for r in rows
                 if r.work_order and r.operation and r.type.startswith("keyop.operation.")}
        states = await asyncio.to_thread(self.store.states, pairs) if pairs else {}
        router = self.router()
        # Suppliers that take CloudEvents batches: (supplier, work order) -> [(pk, seq, json)].
        grouped: dict[tuple[str, str], list[tuple[int, str, bytes]]] = {}
        # Orders whose operation state moved: work order -> supplier -> last pk.
        moved: dict[str, dict[str, int]] = {}
        for row in rows:
            try:
                event, copies = self._copies(row, router, cursors)
            except BAD_ROW as error:
                # Skipped for every supplier (the cursors move past it): one unreadable row
                # must not hold up the fan-out for everyone.
                self.skipped += 1
                self._warnings.warning(
                    f"skip:{type(error).__name__}", "fan-out: stored packet %d (%s) skipped "
                    "for every supplier: %s", row.pk, row.id, reason(error),
                    extra={"pk": row.pk, "id": row.id})
                continue
            if not copies:
                continue
            sequence = str(event.get("sequence", ""))
            props: Any = None
            state = states.get((row.work_order or "", row.operation or ""))
            # Only the newest event of the operation sets the retained state, whatever the
            # arrival order (guarantee 6).
            latest = state is not None and state.last_pk == row.pk
            for supplier, copy in copies.items():
                sent = step.sent[supplier]
                rules = self.config.suppliers[supplier]
                if rules.batch:
                    grouped.setdefault((supplier, row.work_order or ""), []).append(
                        (row.pk, sequence, copy))
                else:
                    if props is None:
                        props = packed_properties(
                            CONTENT_TYPE,
                            [("id", row.id), ("type", row.type), ("sequence", sequence)])
                    sent.append((row.pk, self.mqtt.publish(
                        _events_topic(supplier, row.work_order or ""), copy,
                        properties=props)))
                if latest:
                    moved.setdefault(row.work_order or "", {})[supplier] = row.pk
                    try:
                        sent.append((row.pk, self._publish_state(supplier, state)))
                    except BAD_ROW as error:  # the event went out; its state row is odd
                        self._warnings.warning(
                            f"state:{row.work_order}/{row.operation}", "fan-out: retained "
                            "state of work order %s operation %s not published: %s",
                            row.work_order, row.operation, reason(error),
                            extra={"work_order": row.work_order, "operation": row.operation})
            self.packets += 1
        for (supplier, work_order), items in grouped.items():
            self._publish_batches(step.sent[supplier], supplier, work_order, items)
        retained = await self._publish_orders(step, moved)
        for supplier in {s for s, _ in grouped} | retained:
            # settle_cursors reads each supplier's messages in pk order.
            step.sent[supplier].sort(key=lambda pair: pair[0])
        return step

    def _copies(self, row: StoredPacket, router: routing.Router, cursors: dict[str, int]
                ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """A stored row's event and its redacted copy for each concerned supplier not yet past
        it; raises one of BAD_ROW when the body cannot be parsed or routed."""
        event = self._recent.pop(row.pk, None) or pydantic_core.from_json(row.body)
        if not isinstance(event, dict):
            raise TypeError(f"body is a JSON {type(event).__name__}, not an object")
        copies = {supplier: routing.redact(event, self.config.suppliers[supplier])
                  for supplier in router.suppliers_for(event) if row.pk > cursors[supplier]}
        return event, copies

    def _publish_batches(self, sent: list[tuple[int, asyncio.Future[None]]], supplier: str,
                         work_order: str, items: list[tuple[int, str, bytes]]) -> None:
        """One CloudEvents batch message per run of events under the size cap."""
        topic = _events_topic(supplier, work_order)
        start = 0
        while start < len(items):
            size, end = 2, start
            while end < len(items) and (end == start or size + len(items[end][2]) + 1
                                        <= _BATCH_BYTES):
                size += len(items[end][2]) + 1
                end += 1
            chunk = items[start:end]
            props = packed_properties(BATCH_CONTENT_TYPE, [("sequence", chunk[0][1]),
                                                           ("sequence", chunk[-1][1])])
            future = self.mqtt.publish(topic, b"[" + b",".join(i[2] for i in chunk) + b"]",
                                       properties=props)
            sent.extend((pk, future) for pk, _, _ in chunk)
            start = end

    async def _publish_orders(self, step: _Step, moved: dict[str, dict[str, int]]) -> set[str]:
        """Retain the order object of each moved order for each supplier (with the pk of the
        order's last event in the step); returns the suppliers sent one."""
        if self.orders is None or not moved:
            return set()
        documents = await asyncio.to_thread(self.orders, moved)
        for (supplier, work_order), document in documents.items():
            payload = json.dumps(document, separators=(",", ":")).encode()
            step.sent[supplier].append((moved[work_order][supplier], self.mqtt.publish(
                topics.sup_order_state(supplier, work_order), payload, retain=True,
                properties=_STATE_PROPERTIES)))
        return {supplier for supplier, _ in documents}

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
# A supplier's events topic for a work order, checked and built once while the order runs
# rather than for every message.
_events_topic = functools.lru_cache(maxsize=4096)(topics.sup_events)


def settle_cursors(
    cursors: dict[str, int], sent: Sent, last_pk: int
) -> tuple[dict[str, int], int, list[tuple[str, int, str]]]:
    """Cursor moves after one step: each supplier up to just before its first message the
    broker did not acknowledge, or to `last_pk` when it acknowledged them all.

    `sent` lists each supplier's `(pk, future)` in pk order. Returns the new cursors of the
    suppliers that moved, the number of acknowledged messages (a batch message once), and one
    failure per supplier that has any, as `(supplier, pk, error)`.
    """
    advanced: dict[str, int] = {}
    # Messages, not events: the events of a CloudEvents batch share one message (and future).
    acknowledged: set[int] = set()
    failures: list[tuple[str, int, str]] = []
    for supplier, pairs in sent.items():
        first_bad: tuple[str, int, str] | None = None
        for pk, future in pairs:
            if future.done() and not future.cancelled() and future.exception() is None:
                acknowledged.add(id(future))
            elif first_bad is None:
                error = future.exception() if future.done() and not future.cancelled() else None
                first_bad = (supplier, pk, str(error or "no PUBACK in time"))
        target = last_pk
        if first_bad is not None:
            failures.append(first_bad)
            target = first_bad[1] - 1
        if target > cursors[supplier]:
            advanced[supplier] = target
    return advanced, len(acknowledged), failures
