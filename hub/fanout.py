"""Fan-out to suppliers (delivery guarantee 5): the stored packet log is the hub's outbox.

Each supplier has a cursor (`supplier_cursors.last_pk`). One task reads packets after the lowest
cursor, routes each, publishes the redacted copy to the supplier's events topic and the retained
state to its state topic, and advances a supplier's cursor only past packets whose messages the
broker has PUBACKed. A crash before the cursor moves means a resend with the same `id`, which
suppliers dedupe on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any

from hub import routing
from hub.config import HubConfig
from hub.mqtt import HubMqtt, publish_properties
from hub.store import Store, StoredPacket
from sync import topics
from sync.packet import CONTENT_TYPE

log = logging.getLogger(__name__)

STATE_EXPIRY_S = 30 * 86_400
STATE_CONTENT_TYPE = "application/json"
# The same for every state message; paho's Properties are costly to build (~70 us), and paho
# only reads them.
_STATE_PROPERTIES = publish_properties(STATE_CONTENT_TYPE, expiry_s=STATE_EXPIRY_S)


class FanOut:
    """The fan-out task. `wake()` after every store commit; a slow timer covers the rest."""

    def __init__(
        self,
        config: HubConfig,
        store: Store,
        mqtt: HubMqtt,
        *,
        batch: int = 500,
        puback_timeout_s: float = 30.0,
        idle_s: float = 2.0,
    ) -> None:
        self.config = config
        self.store = store
        self.mqtt = mqtt
        self.batch = batch
        self.puback_timeout_s = puback_timeout_s
        self.idle_s = idle_s
        self.published = 0
        self.failed = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New packets were committed."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out until `stop` is set (finishing the step in progress)."""
        while not stop.is_set():
            self._wake.clear()
            moved, ok = await self.step()
            if moved and ok:
                continue  # more may be waiting: read on without sleeping
            # Idle, or a supplier's publish failed: wait for new packets or the slow timer.
            waiters = [asyncio.ensure_future(stop.wait())]
            if ok:
                waiters.append(asyncio.ensure_future(self._wake.wait()))
            _, pending = await asyncio.wait(
                waiters, timeout=self.idle_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def step(self) -> tuple[int, bool]:
        """One pass over the packets after the lowest cursor: (packets read, all acknowledged)."""
        suppliers = list(self.config.suppliers)
        if not suppliers:
            return 0, True
        cursors = await asyncio.to_thread(self.store.get_cursors, suppliers)
        rows = await asyncio.to_thread(self.store.packets_after, min(cursors.values()), self.batch)
        if not rows:
            return 0, True
        events = [json.loads(row.body) for row in rows]
        latest = await asyncio.to_thread(self._latest_states, rows)

        sent: Sent = {s: [] for s in suppliers}
        for row, event in zip(rows, events, strict=True):
            for supplier in routing.suppliers_for(event, self.config):
                if row.pk <= cursors[supplier]:
                    continue  # this supplier already has it
                for future in self._publish(supplier, row, event, latest):
                    sent[supplier].append((row.pk, future))

        futures = [f for pairs in sent.values() for _, f in pairs]
        if futures:
            await asyncio.wait(futures, timeout=self.puback_timeout_s)
        advanced, acknowledged, failures = settle_cursors(cursors, sent, rows[-1].pk)
        self.published += acknowledged
        for supplier, pk, error in failures:
            self.failed += 1
            log.warning("fan-out not acknowledged, will resend: %s", error,
                        extra={"supplier": supplier, "pk": pk})
        self.mqtt.forget(futures)
        await asyncio.to_thread(self.store.set_cursors, advanced)
        return len(rows), not failures

    def _publish(
        self, supplier: str, row: StoredPacket, event: dict[str, Any],
        latest: dict[tuple[str, str], int | None],
    ) -> list[asyncio.Future[None]]:
        rules = self.config.suppliers[supplier]
        work_order = row.work_order or ""
        props = publish_properties(
            CONTENT_TYPE,
            [("id", row.id), ("type", row.type), ("sequence", str(event.get("sequence", "")))],
        )
        futures = [
            self.mqtt.publish(
                topics.sup_events(supplier, work_order),
                routing.redact(event, rules),
                properties=props,
            )
        ]
        state = routing.state_of(event)
        if (
            state is not None
            and row.work_order
            and row.operation
            # Only the newest event of the operation sets the retained state, whatever the
            # arrival order (guarantee 6).
            and latest.get((row.work_order, row.operation)) == row.pk
        ):
            futures.append(
                self.mqtt.publish(
                    topics.sup_state(supplier, row.work_order, row.operation),
                    state,
                    retain=True,
                    properties=_STATE_PROPERTIES,
                )
            )
        return futures

    def _latest_states(self, rows: Iterable[StoredPacket]) -> dict[tuple[str, str], int | None]:
        pairs: set[tuple[str, str]] = set()
        for row in rows:
            if row.work_order and row.operation and row.type.startswith("keyop.operation."):
                pairs.add((row.work_order, row.operation))
        return {pair: self.store.latest_state_pk(*pair) for pair in pairs}


Sent = dict[str, list[tuple[int, asyncio.Future[None]]]]


def settle_cursors(
    cursors: dict[str, int], sent: Sent, last_pk: int
) -> tuple[dict[str, int], int, list[tuple[str, int, str]]]:
    """Cursor moves after one step: each supplier up to just before its first message the
    broker did not acknowledge, or to `last_pk` when it acknowledged them all.

    `sent` lists each supplier's `(pk, future)` in pk order. Returns the new cursors of the
    suppliers that moved, the number of acknowledged messages, and one failure per supplier
    that has any, as `(supplier, pk, error)`.
    """
    advanced: dict[str, int] = {}
    acknowledged = 0
    failures: list[tuple[str, int, str]] = []
    for supplier, pairs in sent.items():
        first_bad: tuple[str, int, str] | None = None
        for pk, future in pairs:
            if future.done() and not future.cancelled() and future.exception() is None:
                acknowledged += 1
            elif first_bad is None:
                error = future.exception() if future.done() and not future.cancelled() else None
                first_bad = (supplier, pk, str(error or "no PUBACK in time"))
        target = last_pk
        if first_bad is not None:
            failures.append(first_bad)
            target = first_bad[1] - 1
        if target > cursors[supplier]:
            advanced[supplier] = target
    return advanced, acknowledged, failures
