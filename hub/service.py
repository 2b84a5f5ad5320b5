"""The running hub: ingest (validate, dedupe, store, ack) and fan-out, on one asyncio loop.

Ingest follows docs/architecture.md "Delivery guarantees": a packet is acknowledged to its edge only
after the database commit, with the highest contiguous seq stored for its `(source, epoch)`;
repeats are absorbed and counted; gaps are logged and counted; invalid input goes to dead letters
and never stops the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from common.heap import settle_heap
from common.logs import install_level_signals
from common.mqtt_properties import publish_properties
from common.sdnotify import Notifier, watchdog
from hub.admission import Admission, Admitted
from hub.alerts import Alerts
from hub.api import ApiContext
from hub.api.auth import Keys
from hub.badrows import reason
from hub.config import HubConfig, HubConfigError, load_config
from hub.db_errors import transient
from hub.fanout import FanOut
from hub.feed import Feed
from hub.hubstatus import publish_status
from hub.identity import ClientIdInUse, ClientLease
from hub.log_throttle import RepeatedWarnings
from hub.metrics import registry_for
from hub.mqtt import HubMqtt, Inbound
from hub.retention import Retention
from hub.scheduler import Job, run_jobs
from hub.server import ApiServer
from hub.store import DeadLetter, Ident, Incoming, Store, StoreResult
from hub.supervisor import Supervisor
from hub.validate import decode_events, validate_event
from hub.webhooks.cursors import Cursors
from hub.webhooks.deliverer import THREADS as WEBHOOK_THREADS
from hub.webhooks.deliverer import Deliverer
from hub.webhooks.status import WebhookStatus
from sync import topics
from sync.packet import Packet, PacketError, format_sequence

log = logging.getLogger(__name__)

# Group commit: gather messages for up to this long after the first, or this many events
# (a message may carry a batch of events), per transaction.
BATCH_MAX_EVENTS = 500
# How often the ingest loop looks at the stop flag while idle.
_POLL_S = 0.25
# Pause after a database error before the batch is tried again.
_DB_RETRY_S = 1.0
# A dead letter's reason names at most this many of a message's bad events (and counts all).
_REASONS_SHOWN = 5
# How often a worker re-reads the API's order assignments (another worker may have changed them).
_RELOAD_S = 10.0


@dataclass(slots=True)
class _Batch:
    """Messages taken for one transaction: valid packets, dead letters (one per message with
    bad events), and the identities of refused events that are settled (hub/admission.py)."""

    messages: list[Inbound] = field(default_factory=list)
    incoming: list[Incoming] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    refused: list[Ident] = field(default_factory=list)

    @property
    def events(self) -> int:
        return len(self.incoming) + sum(letter.items for letter in self.letters)


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
        self.refused_seqs = 0  # refused events settled so acknowledgements go on past them
        self.future_events = 0  # event times beyond the allowed skew, ordered as received
        self.store_refusals = 0  # events valid to us that the database would not take
        self.admission = Admission(config)
        self._warnings = RepeatedWarnings(log)
        self.store: Store | None = None
        self.mqtt: HubMqtt | None = None
        self.fanout: FanOut | None = None
        self.context: ApiContext | None = None
        self.api: ApiServer | None = None
        self.alerts: Alerts | None = None
        self.supervisor: Supervisor | None = None
        self.retention: Retention | None = None
        self.notifier = Notifier()
        self.webhooks: Deliverer | None = None  # the fan-out role's webhook delivery
        self.webhook_status: WebhookStatus | None = None
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
            Keys(self.config)  # unreadable key files stop the hub here (HubConfigError), not later
        # Migrations and the first connection block: keep them off the loop.
        self.store = store = await asyncio.to_thread(Store, self.config.hub.database_url(),
                                                     self.config)
        feed = Feed(store)
        self.webhook_status = WebhookStatus(self.config, Cursors(store), feed)
        if self.config.hub.fanout and any(s.webhooks for s in self.config.suppliers.values()):
            # Its own connections, so its reads never wait for one that ingest holds.
            view = store.with_own_pool(WEBHOOK_THREADS)
            try:  # an unreadable or open secret file stops the hub here (HubConfigError)
                self.webhooks = Deliverer(self.config, view, Feed(view), appended=feed.wait)
            except HubConfigError:
                await asyncio.to_thread(store.close)
                raise
        webhooks = self.webhooks
        # One process per client id: a second one stops here (hub/identity.py), before it
        # could take the first one's broker session.
        lease = ClientLease(store, self.config.mqtt, self.config.hub.id)
        try:
            await lease.acquire()
        except ClientIdInUse:
            await asyncio.to_thread(store.close)
            raise
        self.context = context = await asyncio.to_thread(ApiContext, self.config, store)
        context.metrics = registry_for(self)
        context.webhook_status = self.webhook_status.rows
        roles = self.config.hub
        self.mqtt = mqtt = HubMqtt(self.config.mqtt, roles.id, loop, ingest=roles.ingest)
        self.fanout = fanout = (FanOut(self.config, store, mqtt,
                                       orders=context.orders.documents)
                                if roles.fanout else None)
        context.online = mqtt.connection.is_connected
        mqtt.start()
        settle_heap()
        log.info("hub started", extra={"hub": self.config.hub.id,
                                       "database": store.url.render_as_string(),
                                       "ingest": roles.ingest, "fanout": roles.fanout})
        # Every task runs under the supervisor: one that raises is logged, counted and
        # restarted, never the end of the hub; a HubConfigError (another process took this one's
        # identity) still ends it (hub/supervisor.py).
        self.supervisor = tasks = Supervisor(stop, fatal=(HubConfigError,))
        tasks.spawn("reload", lambda: self._reload(stop))
        tasks.spawn("identity", lambda: lease.run(stop))
        tasks.spawn("status", lambda: publish_status(mqtt, store, roles.id, stop,
                                                     roles.status_interval_s))
        if roles.ingest:
            tasks.spawn("ingest", lambda: self._ingest(stop))
        if fanout is not None:
            tasks.spawn("fanout", lambda: fanout.run(stop))
        if webhooks is not None:
            tasks.spawn("webhooks", lambda: webhooks.run(stop))
        jobs: list[Job] = []
        if self.config.alerts.enabled:
            self.alerts = alerts = Alerts(self.config, store, context)
            jobs.append(alerts.job())
        self.retention = retention = Retention(self.config, store)
        if retention.limits():
            jobs.append(retention.job())
        if jobs:
            tasks.spawn("scheduler", lambda: run_jobs(jobs, stop, tasks))
        if self.config.api.enabled:
            self.api = api = ApiServer(self.config.api, context)
            if await api.start():
                tasks.spawn("api", lambda: api.run(stop))
        context.broker_up = mqtt.connection.is_connected
        notifier = self.notifier
        notifier.ready(self.status_line())
        # Not under the supervisor: it never ends by itself, and a stop must not wait for it.
        pings = asyncio.create_task(watchdog(notifier, self.status_line), name="hub-watchdog")
        try:
            await tasks.wait()
        finally:
            notifier.stopping(f"stopping: {self.status_line()}")
            log.info("hub stopping", extra={"stored": self.stored})
            # Ingest ends after the batch in hand is stored and acknowledged; the fan-out
            # saves its cursors (hub/fanout.py).
            await tasks.close(grace_s=5.0)
            if webhooks is not None:
                await webhooks.close()
                if webhooks.store is not store:
                    await asyncio.to_thread(webhooks.store.close)
            pings.cancel()
            await asyncio.gather(pings, return_exceptions=True)
            await mqtt.close()
            await lease.release()  # only once disconnected: the next holder may connect
            await asyncio.to_thread(context.close)  # the API's threads and connections
            await asyncio.to_thread(store.close)
            log.info("hub stopped", extra={"stored": self.stored, "duplicates": self.duplicates,
                                           "dead_letters": self.dead_letters})
            notifier.close()

    def status_line(self) -> str:
        """One line for `systemctl status`: e.g. `stored 10,482, acks sent 311, 0 dead
        letters, broker connected`."""
        mqtt = self.mqtt
        up = mqtt is not None and mqtt.connection.is_connected()
        return (f"stored {self.stored:,}, duplicates {self.duplicates:,}, acks sent "
                f"{self.acks_sent:,}, {self.dead_letters:,} dead letters, "
                f"broker {'connected' if up else 'down'}")

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
            self._warnings.flush()  # idle: report the repeats held back
            return batch
        self._take(first, batch)
        while batch.events < BATCH_MAX_EVENTS:
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
        try:
            self._validate(message, batch)
        except Exception as error:  # a validator bug must not stop ingest
            # Nothing of a message may stop the loop: whatever escaped validation makes the
            # message one dead letter, with the traceback logged for us to fix.
            log.exception("ingest: unexpected error validating a message from %s",
                          message.topic, extra={"topic": message.topic})
            batch.letters.append(DeadLetter(
                message.topic, f"hub error while validating: {type(error).__name__}",
                message.payload))

    async def handle(self, batch: _Batch, stop: asyncio.Event) -> None:
        """Store one batch, then PUBACK its messages and acknowledge to the edges.

        Dead-lettered messages are PUBACKed too (the letter is committed first), so a restart
        does not meet the same poison again.
        """
        result = await self._store(batch, stop)
        if result is None:
            return  # stopping: not acked, so the broker session gives them to the next run
        assert self.mqtt is not None
        self.mqtt.ack(batch.messages)
        self.messages += len(batch.messages)  # handled: stored or dead-lettered, and acked
        self.dead_letters += len(batch.letters) + result.id_clashes
        self.stored += result.new
        self.duplicates += result.duplicates
        self.refused_seqs += result.refused
        self._acknowledge(result)
        self._report_gaps(result)

    async def _store(self, batch: _Batch, stop: asyncio.Event) -> StoreResult | None:
        """Commit a batch, retrying while the database is away; None if stopped meanwhile.

        An event the database refuses (a constraint, a value the driver cannot bind) is
        pulled out of the batch into the dead letters, and the rest commits (`_isolate`).
        Only an unreachable or overloaded database holds a batch back (`hub.db_errors.transient`).
        """
        assert self.store is not None
        failing = False
        while True:
            try:
                result = await self._isolate(batch.incoming, batch.refused, batch.letters)
            except Exception as error:  # _isolate raises transient ones only
                if not transient(error):
                    raise
                if not failing:
                    # Log the transition once; quiet while it lasts (STYLE "Errors and logs").
                    log.error("hub store failed, batch held and retried: %s",
                              reason(error), extra={"packets": len(batch.incoming)})
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _DB_RETRY_S)
                if stop.is_set():
                    return None
                continue
            if failing:
                log.info("hub store recovered", extra={"packets": len(batch.incoming)})
            return result

    async def _isolate(self, items: list[Incoming], refused: list[Ident],
                       letters: list[DeadLetter]) -> StoreResult:
        """Store `items`, the batch's dead letters and refused identities in one transaction;
        when the database refuses it for its data, store the halves apart, down to the one
        event it refuses, which becomes a dead letter (its identity settled like any refused
        event). Transient errors are raised for `_store` to retry the whole batch.
        """
        assert self.store is not None
        try:
            return await asyncio.to_thread(self.store.store_batch, items, refused=refused,
                                           letters=letters)
        except Exception as error:  # any refusal of one event is isolated
            if transient(error) or not items:
                raise
            if len(items) > 1:
                middle = len(items) // 2
                result = await self._isolate(items[:middle], refused, letters)
                result.absorb(await self._isolate(items[middle:], [], []))
                return result
            item = items[0]
            packet = item.packet
            why = f"the hub store refused it: {reason(error)}"
            if not isinstance(error, SQLAlchemyError):
                log.exception("hub store refused a packet: %s", why,
                              extra={"source": packet.source, "sequence": packet.sequence})
            topic = topics.up_events(topics.gateway_of(packet.source))
            body = (item.body or json.dumps(item.raw)).encode("utf-8", "backslashreplace")
            result = await asyncio.to_thread(
                self.store.store_batch, [],
                refused=[*refused, (packet.source, packet.sourceepoch, packet.seq)],
                letters=[*letters, DeadLetter(topic, why, body)])
            # Counted once committed: a transient failure above retries the whole batch.
            self.store_refusals += 1
            self.dead_letters += 1
            self._warn(topic, why, 1)
            return result

    def _validate(self, message: Inbound, batch: _Batch) -> None:
        """Split one message into admitted packets and, for its bad events, one dead letter."""
        gateway = topics.gateway_from_up_topic(message.topic) or ""
        try:
            objects = decode_events(message.payload)
        except PacketError as error:
            self._warn(message.topic, str(error), 1)
            batch.letters.append(DeadLetter(message.topic, str(error), message.payload))
            return
        problems: list[str] = []
        for index, obj in enumerate(objects):
            try:
                packet, canonical, body = validate_event(obj)
            except PacketError as error:
                problem = str(error)
            else:
                admitted = self.admission.check(gateway, packet, message.received_at)
                if isinstance(admitted, Admitted):
                    batch.incoming.append(self._incoming(packet, canonical, body, admitted))
                    continue
                problem = admitted
            problems.append(f"event {index}: {problem}" if len(objects) > 1 else problem)
            identity = self.admission.trusted_identity(gateway, obj)
            if identity is not None:
                batch.refused.append(identity)
        if problems:
            shown = "; ".join(problems[:_REASONS_SHOWN])
            more = len(problems) - _REASONS_SHOWN
            reason = shown + (f"; and {more} more bad events" if more > 0 else "")
            self._warn(message.topic, problems[0], len(problems))
            batch.letters.append(DeadLetter(message.topic, reason, message.payload,
                                            len(problems)))

    def _incoming(self, packet: Packet, canonical: dict[str, Any], body: str,
                  admitted: Admitted) -> Incoming:
        if not admitted.future:
            return Incoming(packet, canonical, body, time=admitted.time)  # parsed once
        self.future_events += 1
        self._warnings.warning(
            f"future:{packet.source}",
            "event time %s of %s is ahead of the hub's clock by more than %.0fs: stored, "
            "ordered as received (check the gateway's clock)", packet.time, packet.source,
            self.admission.max_skew_s, extra={"source": packet.source, "time": packet.time})
        return Incoming(packet, canonical, body, time=admitted.time)

    def _warn(self, topic: str, reason: str, items: int) -> None:
        """One WARNING per kind of refusal (topic, field) and window, repeats counted."""
        field = reason.split(":", 1)[0]
        self._warnings.warning(
            f"dead:{topic}:{field}", "refused to dead letters (%s): %s", topic, reason,
            extra={"topic": topic, "reason": reason[:300], "items": items})

    def _acknowledge(self, result: StoreResult) -> None:
        assert self.mqtt is not None
        for progress in result.progress.values():
            # Ack when the contiguous seq moved, and again on repeats (and refused resends):
            # the edge may have lost the previous ack and resends until it hears one.
            if progress.contiguous <= 0 or not (progress.advanced or progress.duplicates
                                                or progress.refused):
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
    except HubConfigError as error:
        log.error("%s", error)
        return 2

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        install_level_signals(loop)
        await run_hub(config, stop)

    started = time.monotonic()
    try:
        asyncio.run(_run())
    except SQLAlchemyError as error:
        log.error("hub store unavailable: %s", str(error).splitlines()[0])
        return 1
    except HubConfigError as error:
        log.error("%s", error)
        return 2
    log.info("hub exited", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
