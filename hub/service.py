"""The running hub: ingest (validate, dedupe, store, ack) and fan-out, on one asyncio loop.

Ingest follows ARCHITECTURE.md "Delivery guarantees": a packet is acknowledged to its edge only
after the database commit, with the highest contiguous seq stored for its `(source, epoch)`;
repeats are absorbed and counted; gaps are logged and counted; invalid input goes to dead letters
and never stops the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from hub.alerts import Alerts
from hub.api import ApiContext
from hub.api.auth import Keys
from hub.config import ConfigError, HubConfig, load_config
from hub.fanout import FanOut
from hub.metrics import registry_for
from hub.mqtt import HubMqtt, Inbound
from hub.mqtt_properties import publish_properties
from hub.server import ApiServer
from hub.store import Incoming, Store, StoreResult
from hub.validate import decode_events, validate_event
from sync import topics
from sync.packet import CONTENT_TYPE, PacketError, format_sequence

log = logging.getLogger(__name__)

# Group commit: gather messages for up to this long after the first, or this many events
# (a message may carry a batch of events), per transaction.
BATCH_MAX_EVENTS = 500
# How often the ingest loop looks at the stop flag while idle.
_POLL_S = 0.25
# Pause after a database error before the batch is tried again.
_DB_RETRY_S = 1.0
# How often a worker re-reads the API's order assignments (another worker may have changed them).
_RELOAD_S = 10.0


@dataclass(slots=True)
class _Batch:
    """Messages taken for one transaction, split into valid packets and dead letters."""

    messages: list[Inbound] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    rejects: list[tuple[str, str, bytes]] = field(default_factory=list)


class HubService:
    """The hub process. Counters are plain attributes for tests, benchmarks and metrics."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.stored = 0
        self.duplicates = 0
        self.dead_letters = 0
        self.gaps = 0
        self.acks_sent = 0
        self.messages = 0
        self.store: Store | None = None
        self.mqtt: HubMqtt | None = None
        self.fanout: FanOut | None = None
        self.context: ApiContext | None = None
        self.api: ApiServer | None = None
        self.alerts: Alerts | None = None
        # Gaps already reported, so a hole is logged once, not on every batch while it lasts.
        self._gaps_seen: set[tuple[str, str, int]] = set()

    @property
    def fanout_published(self) -> int:
        return self.fanout.published if self.fanout else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then finish the work in hand and leave cleanly."""
        loop = asyncio.get_running_loop()
        # create_all and the first connection block: keep them off the loop.
        if self.config.api.enabled:
            Keys(self.config)  # unreadable key files stop the hub here (ConfigError), not later
        # Migrations and the first connection block: keep them off the loop.
        self.store = store = await asyncio.to_thread(Store, self.config.hub.database)
        # Cursors for suppliers new to this database, before anything is ingested: a new
        # supplier starts at the head of the log (hub/fanout.py).
        await asyncio.to_thread(store.start_cursors, self.config.suppliers)
        self.context = context = await asyncio.to_thread(ApiContext, self.config, store)
        context.metrics = registry_for(self)
        roles = self.config.hub
        self.mqtt = mqtt = HubMqtt(self.config.mqtt, roles.id, loop, ingest=roles.ingest)
        self.fanout = fanout = (FanOut(self.config, store, mqtt, router=context.router)
                                if roles.fanout else None)
        mqtt.start()
        _settle_heap()
        log.info("hub started", extra={"hub": self.config.hub.id,
                                       "database": store.url.render_as_string(),
                                       "ingest": roles.ingest, "fanout": roles.fanout})
        tasks = [asyncio.create_task(self._reload(stop), name="hub-reload")]
        if roles.ingest:
            tasks.append(asyncio.create_task(self._ingest(stop), name="hub-ingest"))
        if fanout is not None:
            tasks.append(asyncio.create_task(fanout.run(stop), name="hub-fanout"))
        if self.config.alerts.enabled:
            self.alerts = Alerts(self.config, store, context)
            alert_props = publish_properties(CONTENT_TYPE)
            tasks.append(asyncio.create_task(self.alerts.run(
                stop, lambda topic, payload: mqtt.publish(topic, payload,
                                                          properties=alert_props)),
                name="hub-alerts"))
        if self.config.api.enabled:
            self.api = ApiServer(self.config.api, context)
            if await self.api.start():
                tasks.append(asyncio.create_task(self.api.run(stop), name="hub-api"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a crashed task ends the hub loudly
        finally:
            stop.set()
            for task in tasks:
                if not task.done():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(task), 5.0)
                    task.cancel()
            await mqtt.close()
            await asyncio.to_thread(store.close)
            log.info("hub stopped", extra={"stored": self.stored, "duplicates": self.duplicates,
                                           "dead_letters": self.dead_letters})

    async def _reload(self, stop: asyncio.Event) -> None:
        assert self.context is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RELOAD_S)
            if not stop.is_set():
                try:
                    await asyncio.to_thread(self.context.reload)
                except SQLAlchemyError as error:
                    log.warning("assignments not reloaded: %s", str(error).splitlines()[0])

    # -- ingest ---------------------------------------------------------------------------

    async def _ingest(self, stop: asyncio.Event) -> None:
        assert self.mqtt is not None
        while not stop.is_set():
            batch = await self._collect()
            if batch.messages:
                await self.handle(batch, stop)

    async def _collect(self) -> _Batch:
        """Everything already waiting, up to BATCH_MAX_EVENTS events, without waiting for more.

        Batches form by themselves under load (messages pile up while the previous commit
        runs); a lone packet is committed at once instead of waiting out a window, which
        would add its length to every acknowledgement's latency.
        """
        assert self.mqtt is not None
        inbox = self.mqtt.inbox
        batch = _Batch()
        try:
            first = await asyncio.wait_for(inbox.get(), _POLL_S)
        except TimeoutError:
            return batch
        self._take(first, batch)
        while len(batch.incoming) + len(batch.rejects) < BATCH_MAX_EVENTS:
            if inbox.empty():
                await asyncio.sleep(0)  # let messages handed over meanwhile land
                if inbox.empty():
                    break
            item = inbox.get_nowait()
            self._take(item, batch)
        return batch

    def _take(self, message: Inbound, batch: _Batch) -> None:
        assert self.mqtt is not None
        self.mqtt.taken()
        batch.messages.append(message)
        batch.incoming.extend(self._validate(message, batch.rejects))

    async def handle(self, batch: _Batch, stop: asyncio.Event) -> None:
        """Store one batch, then PUBACK its messages and acknowledge to the edges."""
        self.messages += len(batch.messages)
        rejects = batch.rejects
        result = await self._store(batch.incoming, rejects, stop)
        if result is None:
            return  # stopping: not acked, so the broker session gives them to the next run
        assert self.mqtt is not None
        self.mqtt.ack(batch.messages)
        self.dead_letters += len(rejects)
        self.stored += result.new
        self.duplicates += result.duplicates
        self._acknowledge(result)
        self._report_gaps(result)
        if result.new and self.fanout is not None:
            self.fanout.remember(result.inserted)
            self.fanout.wake()
        if result.new and self.context is not None:
            self.context.pulse.notify()

    async def _store(
        self, incoming: list[Incoming], rejects: list[tuple[str, str, bytes]],
        stop: asyncio.Event,
    ) -> StoreResult | None:
        """Commit a batch, retrying while the database is away; None if stopped meanwhile."""
        assert self.store is not None
        failing = False
        while True:
            try:
                if rejects:
                    await asyncio.to_thread(self.store.dead_letter_many, rejects)
                    rejects = []  # committed: never twice
                result = await asyncio.to_thread(self.store.store_batch, incoming)
            except SQLAlchemyError as error:
                if not failing:
                    # Log the transition once; quiet while it lasts (STYLE "Errors and logs").
                    log.error("hub store failed, batch held and retried: %s",
                              str(error).splitlines()[0], extra={"packets": len(incoming)})
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _DB_RETRY_S)
                if stop.is_set():
                    return None
                continue
            if failing:
                log.info("hub store recovered", extra={"packets": len(incoming)})
            return result

    def _validate(self, message: Inbound, rejects: list[tuple[str, str, bytes]]
                  ) -> list[Incoming]:
        gateway = topics.gateway_from_up_topic(message.topic)
        try:
            objects = decode_events(message.payload)
        except PacketError as error:
            self._reject(message.topic, str(error), message.payload, rejects)
            return []
        good: list[Incoming] = []
        suspect = b"\\u0000" in message.payload
        for obj in objects:
            try:
                packet, body = validate_event(obj)
            except PacketError as error:
                self._reject(message.topic, str(error), _dump(obj), rejects)
                continue
            if suspect and "\\u0000" in body:
                # PostgreSQL cannot store NUL in text; no real id or name carries one.
                self._reject(message.topic, "a string holds a NUL character (\\u0000)",
                             _dump(obj), rejects)
                continue
            if topics.gateway_of(packet.source) != gateway:
                # A gateway may only speak for itself (the broker ACL says so too).
                reason = (f"source {packet.source!r} does not belong to gateway {gateway!r} "
                          "of the topic")
                self._reject(message.topic, reason, _dump(obj), rejects)
                continue
            good.append(Incoming(packet, obj, body))
        return good

    def _reject(self, topic: str, reason: str, payload: bytes,
                rejects: list[tuple[str, str, bytes]]) -> None:
        log.warning("invalid packet to dead letters (%s): %s", topic, reason,
                    extra={"topic": topic, "reason": reason})
        rejects.append((topic, reason, payload))

    def _acknowledge(self, result: StoreResult) -> None:
        assert self.mqtt is not None
        for progress in result.progress.values():
            # Ack when the contiguous seq moved, and again on repeats: the edge may have lost
            # the previous ack and resends until it hears one.
            if progress.contiguous <= 0 or not (progress.advanced or progress.duplicates):
                continue
            payload = json.dumps({
                "sourceepoch": progress.epoch,
                "sequence": format_sequence(progress.contiguous),
            }).encode()
            try:
                topic = topics.down_ack(topics.gateway_of(progress.source))
            except topics.TopicError:
                continue  # cannot happen for a validated source; never widen a topic
            self.mqtt.publish_nowait(
                topic, payload, properties=publish_properties("application/json")
            )
            self.acks_sent += 1

    def _report_gaps(self, result: StoreResult) -> None:
        for gap in result.gaps:
            key = (gap.source, gap.epoch, gap.first)
            if key in self._gaps_seen:
                continue
            self._gaps_seen.add(key)
            self.gaps += 1
            log.warning(
                "sequence gap: %s epoch %s misses %d..%d",
                gap.source, gap.epoch, gap.first, gap.last,
                extra={"source": gap.source, "epoch": gap.epoch,
                       "from_seq": gap.first, "to_seq": gap.last},
            )


def _settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running ingest loop.

    Everything built so far (modules, config, engine, router) lives as long as the hub: frozen,
    the collector's full passes stop rescanning it. Each batch allocates tens of thousands of
    short-lived dicts; with the default young-generation threshold (700) many are promoted
    before they die and older generations are collected over and over. Measured with
    `keyop bench hub`: the collector's time fell from about 13 % of the hub's CPU to 1-2 %.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


async def run_hub(config: HubConfig, stop: asyncio.Event) -> None:
    """Run the hub until `stop` is set."""
    await HubService(config).run(stop)


def main(config_path: str) -> int:
    """`keyop hub -c FILE`: run until SIGINT/SIGTERM.

    Returns 0 on a clean stop, 1 when the database is unusable, 2 on a bad config.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        log.error("%s", error)
        return 2

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_hub(config, stop)

    started = time.monotonic()
    try:
        asyncio.run(_run())
    except SQLAlchemyError as error:
        log.error("hub store unavailable: %s", str(error).splitlines()[0])
        return 1
    except ConfigError as error:
        log.error("%s", error)
        return 2
    log.info("hub exited", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
