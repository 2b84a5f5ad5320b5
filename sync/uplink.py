"""The uplink: drains the edge outbox to the broker over MQTT 5; rows go only on the hub's ack.

Delivery (docs/architecture.md, "Delivery guarantees" 2-3): pending rows are published in seq order
with QoS 1. A PUBACK only means the broker took the message; the rows are deleted when the hub
acknowledges on `keyop/v1/down/{gateway}/ack` the highest contiguous sequence it has stored.
When that ack does not advance for `ack_timeout_s`, or after any reconnect, publishing restarts
at acked + 1 with the very same bytes (same id, epoch and sequence), so the hub can dedupe.

Two lanes. Fresh rows come from the outbox worker's commit listener with their bodies, so in
steady state nothing is read back from disk. After an outage the backlog is read from the outbox
in chunks and published in batches (the *backlog lane*); fresh rows committed meanwhile do not
wait behind it: they go out at once on the *live lane* (a reserved part of the in-flight
window), ahead of their turn. The hub orders by sequence and acks the contiguous prefix, so the
early copies only cut the live latency; when the backlog lane reaches the live lane's first
row, the two merge.

Threads: the loop (which also runs paho, see `common.mqtt`) and the outbox worker thread.
The reconnect loop is `Uplink.run`: one fresh MQTT client per connection, so no paho-side replay
mixes with our own resend from acked + 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from ulid import ULID

from common.backoff import Backoff
from common.mqtt import ConnectionLost, ConnectRefused, MqttClient, MqttError
from common.mqtt_properties import publish_properties
from common.mqtt_tls import Tls
from edge_store import Outbox, OutboxError, OutboxWorker, Row, worker_for
from sync import topics
from sync.packet import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    MAX_EVENT_BYTES,
    format_sequence,
    format_time,
)

__all__ = ["Tls", "Uplink", "UplinkConfig"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STATUS_CONTENT_TYPE = "application/json"
_NO_LIMIT = 2**62


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Where and how the uplink connects, and the bounds of its delivery pipeline."""

    host: str
    port: int
    gateway: str
    """Gateway id: client id `keyop-edge-{gateway}` and the topics' `{gateway}`."""
    source: str
    """Packet source `{site}/{gateway}` (for logs; the outbox holds the epoch)."""
    session_expiry_s: float = 86_400
    """How long the broker keeps our session (ack subscription and queued acks) while away;
    whole seconds on the wire."""
    keepalive_s: float = 15
    """MQTT keepalive; whole seconds on the wire (at least 1)."""
    ack_timeout_s: float = 10.0
    """Resend from acked + 1 when the hub's ack has not advanced for this long."""
    batch_max_events: int = 100
    """Most events in one batch message (a batch also stays under 64 KiB)."""
    inflight_max: int = 50
    """MQTT messages awaiting PUBACK (paho sends at most the broker's Receive Maximum of them)."""
    live_reserve: int = 8
    """In-flight slots the backlog lane leaves to fresh packets during a drain."""
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    username: str | None = None
    password: str | None = None
    tls: Tls | None = None
    """TLS towards the broker; None: plain TCP."""
    max_unacked_rows: int = 20_000
    """Rows published beyond the hub's ack (per lane) before the sender waits for the hub."""
    queue_target_s: float = 0.5
    """How much of the hub's work the in-order lane keeps queued ahead of its ack: the window
    is the hub's measured ack rate times this (at least `min_unacked_rows`). The broker hands
    the hub its queue in order, so a fresh packet waits behind whatever sits there: a short
    queue is what keeps live packets fast while a backlog drains."""
    min_unacked_rows: int = 1_000
    fresh_max: int = 20_000
    """Fresh rows kept in memory for publishing; older ones are read back from the outbox."""
    read_chunk: int = 2_000
    """Rows per backlog read from the outbox."""
    idle_wait_s: float = 0.5
    """Fallback wake-up when no `wake()` comes (new rows written by someone else)."""
    connect_timeout_s: float = 10.0
    stop_timeout_s: float = 2.0
    """How long a clean stop waits for the offline status to be PUBACKed."""

    def __post_init__(self) -> None:
        topics.check_id("gateway", self.gateway)
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF or not 1 <= self.keepalive_s <= 65_535:
            raise ValueError(
                f"session_expiry_s ({self.session_expiry_s}) must be 0..4294967295 and "
                f"keepalive_s ({self.keepalive_s}) 1..65535"
            )
        if not 1 <= self.inflight_max <= 65_535:
            raise ValueError(f"inflight_max has value {self.inflight_max}: expected 1..65535")
        if not 0 <= self.live_reserve < self.inflight_max:
            raise ValueError(f"live_reserve has value {self.live_reserve}: expected "
                             f"0..{self.inflight_max - 1} (below inflight_max)")
        if min(self.batch_max_events, self.max_unacked_rows, self.fresh_max,
               self.read_chunk) < 1:
            raise ValueError("batch_max_events, max_unacked_rows, fresh_max and read_chunk "
                             "must be >= 1")
        if not 1 <= self.min_unacked_rows <= self.max_unacked_rows or self.queue_target_s <= 0:
            raise ValueError(f"min_unacked_rows ({self.min_unacked_rows}) must be 1.."
                             f"max_unacked_rows ({self.max_unacked_rows}) and queue_target_s "
                             f"({self.queue_target_s}) > 0")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError(
                f"backoff_min_s ({self.backoff_min_s}) must be > 0 and <= backoff_max_s "
                f"({self.backoff_max_s})"
            )

    @property
    def client_id(self) -> str:
        return f"keyop-edge-{self.gateway}"


class Uplink:
    """Drains one outbox to MQTT 5 until `stop()`.

    Counters (read them freely from the loop): `published_events`, `published_messages`,
    `live_events` (sent ahead on the live lane), `acked_seq` (hub's highest ack),
    `deleted_upto`, `sent_upto`, `resends`, `reconnects`, `connected`. `on_ack` (optional)
    observes each advance of the hub's ack.
    """

    def __init__(self, config: UplinkConfig, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.epoch = outbox.epoch
        self.published_events = 0
        self.published_messages = 0
        self.live_events = 0
        self.acked_seq = 0
        self.deleted_upto = 0
        self.sent_upto = 0
        self.resends = 0
        self.reconnects = 0
        self.connected = False
        self.on_ack: Callable[[int], None] | None = None
        """Called on the loop with the new acked seq whenever the hub's ack advances."""
        self._link: MqttClient | None = None
        self._session = ""  # this connection's id, in its status messages (and will)
        self._worker: OutboxWorker | None = None
        self._fresh: deque[Row] = deque()
        self._live: tuple[int, int] | None = None  # (first, last) sent ahead on the live lane
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._clean_stop = True
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._done = asyncio.Event()
        self._running = False
        self._ack_deadline: float | None = None
        self._ack_rate = 0.0  # rows/s the hub acknowledges, smoothed
        self._ack_at: float | None = None
        self._stall_logged = False
        self._foreign_epoch_logged: str | None = None
        self._ack_topic = topics.down_ack(config.gateway)
        self._events_topic = topics.up_events(config.gateway)
        self._status_topic = topics.up_status(config.gateway)

    # --- public API -------------------------------------------------------------------------

    @property
    def link(self) -> MqttClient | None:
        """The MQTT connection in use now (None between connections)."""
        return self._link

    def wake(self) -> None:
        """New rows were committed: publish them now (call from the event loop thread)."""
        self._wake.set()

    async def stop(self, *, clean: bool = True) -> None:
        """Publish the offline status, disconnect cleanly and wait for `run()` to return.

        `clean=False` (a stop cut short) drops the connection at once: the broker then
        publishes the will, which says offline too."""
        self._clean_stop = clean
        self._stop.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    async def wait_acked(self, seq: int, timeout: float | None) -> bool:
        """Wait until rows up to `seq` are acknowledged by the hub and deleted; False on timeout
        (None: no timeout)."""
        if self.deleted_upto >= seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((seq, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            self._ack_waiters = [(s, f) for s, f in self._ack_waiters if f is not future]
        return True

    async def run(self) -> None:
        """Connect, publish, resend and reconnect until `stop()`; the reconnect loop lives here."""
        self._running = True
        self._done.clear()
        self._worker = worker = worker_for(self.outbox)
        worker.add_commit_listener(self._on_commit)
        worker.add_delete_listener(self._on_deleted)
        stats = await asyncio.to_thread(self.outbox.stats)
        # Everything before the first pending row was acknowledged in an earlier run.
        start = stats.last_seq if stats.first_pending_seq is None else stats.first_pending_seq - 1
        self.acked_seq = self.deleted_upto = self.sent_upto = start
        backoff = Backoff(self.config.backoff_min_s, self.config.backoff_max_s)
        ever_connected = False
        down_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    link = await self._connect()
                except (OSError, MqttError, TimeoutError) as error:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.error(
                            "uplink: cannot connect to broker",
                            extra={"host": self.config.host, "port": self.config.port,
                                   "error": str(error)},
                        )
                    else:
                        log.debug("uplink: connect retry failed", extra={"error": str(error)})
                    await self._pause(backoff.next())
                    continue
                if down_since is not None:
                    log.info(
                        "uplink: connection recovered",
                        extra={"outage_s": round(time.monotonic() - down_since, 3),
                               "attempts": backoff.failures},
                    )
                    down_since = None
                else:
                    log.info("uplink: connected", extra={"host": self.config.host,
                                                         "port": self.config.port})
                if ever_connected:
                    self.reconnects += 1
                ever_connected = True
                connected_at = time.monotonic()
                try:
                    await self._serve(link)
                finally:
                    clean = (self._stop.is_set() and self._clean_stop
                             and not link.lost.is_set())
                    await self._close_link(link, clean=clean)
                if self._stop.is_set():
                    break
                down_since = time.monotonic()
                log.error("uplink: connection to broker lost",
                          extra={"host": self.config.host, "port": self.config.port})
                # A connection that held for a while earns an immediate retry; one dropped
                # right after CONNACK (a flapping broker, a twin gateway with our client id)
                # keeps escalating the backoff instead of spinning.
                if down_since - connected_at < self.config.backoff_max_s:
                    await self._pause(backoff.next())
                else:
                    backoff.reset()
        finally:
            self.connected = False
            self._running = False
            self._done.set()

    # --- connection ---------------------------------------------------------------------------

    async def _pause(self, delay: float) -> None:
        """Wait `delay` seconds before the next connect; returns early on stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except TimeoutError:
            pass

    def _status(self, online: bool, session: str) -> bytes:
        body: dict[str, Any] = {"online": online, "session": session}
        if online:
            body.update(
                sourceepoch=self.epoch,
                lastSequence=format_sequence(self.outbox.last_seq),
                version=VERSION,
                ts=format_time(time.time()),
            )
        return json.dumps(body, separators=(",", ":")).encode()

    async def _connect(self) -> MqttClient:
        cfg = self.config
        link = MqttClient(
            asyncio.get_running_loop(), cfg.client_id, inflight_max=cfg.inflight_max,
            window=cfg.inflight_max, queue_offline=False, username=cfg.username,
            password=cfg.password, tls=cfg.tls, connect_timeout_s=cfg.connect_timeout_s,
        )
        # A session id per connection: the hub ignores a late will of an older connection.
        self._session = session = str(ULID())
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.ContentType = STATUS_CONTENT_TYPE
        will_props.PayloadFormatIndicator = 1
        link.client.will_set(
            self._status_topic, self._status(False, session), qos=1, retain=True,
            properties=will_props,
        )
        link.on_message = self._on_message
        link.on_subscribe = _check_subscription
        link.on_refused = _log_refused
        link.on_lost = self._wake.set
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = int(cfg.session_expiry_s)
        # clean_start=False always, also on the first connect of a process: the broker-side
        # session holds the ack subscription and the acks the hub sent while we were away
        # (or restarting), which saves resending what the hub already has. Stale acks of an
        # older epoch are filtered out by `_on_ack`.
        link.configure(cfg.host, cfg.port, int(cfg.keepalive_s), clean_start=False,
                       properties=connect_props)
        await link.open()  # TCP and TLS in a worker thread; then the loop serves the socket
        try:
            reason = await asyncio.wait_for(link.connack, cfg.connect_timeout_s)
            if reason is None:
                raise ConnectionLost("connection closed before CONNACK")
            if reason.is_failure:
                raise ConnectRefused(reason)
        except BaseException:
            await self._close_link(link, clean=False)
            raise
        self._link = link
        return link

    async def _close_link(self, link: MqttClient, *, clean: bool) -> None:
        """End a connection; a clean stop says offline first (a clean DISCONNECT sends no will)."""
        self.connected = False
        if clean:
            confirmed = False
            try:
                link.publish(self._status_topic, self._status(False, self._session),
                             retain=True, properties=publish_properties(STATUS_CONTENT_TYPE))
                confirmed = await link.wait_all_acked(self.config.stop_timeout_s)
            except MqttError:
                pass
            if not confirmed:
                log.warning("uplink: offline status not confirmed before disconnect")
            link.disconnect()
        link.close_socket()
        if self._link is link:
            self._link = None

    # --- fresh rows from the outbox worker ----------------------------------------------------

    def _on_commit(self, rows: list[Row]) -> None:
        fresh = self._fresh
        if fresh and rows[0].seq != fresh[-1].seq + 1:
            fresh.clear()  # not contiguous (cannot happen with one writer): start again
        fresh.extend(rows)
        excess = len(fresh) - self.config.fresh_max
        if excess > 0:
            for _ in range(excess):
                fresh.popleft()  # those are read back from the outbox when their turn comes
        self._wake.set()

    def _take_fresh(self, first: int, count: int) -> list[Row]:
        """Up to `count` fresh rows starting exactly at seq `first` (empty if not in memory)."""
        fresh = self._fresh
        while fresh and fresh[0].seq < first:
            fresh.popleft()
        if not fresh or fresh[0].seq != first:
            return []
        return list(islice(fresh, count))  # indexing a deque walks it: O(n) per item

    # --- publishing ---------------------------------------------------------------------------

    async def _serve(self, link: MqttClient) -> None:
        """Publish until the connection is lost or stop is requested."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        assert self._worker is not None
        link.subscribe([(self._ack_topic, 1)])
        link.publish(self._status_topic, self._status(True, self._session), retain=True,
                     properties=publish_properties(STATUS_CONTENT_TYPE))
        self.connected = True
        # Whatever was in flight on the old connection may be lost: start again after the ack.
        if self.sent_upto > self.acked_seq:
            self.resends += 1
        self._restart_from_ack()
        while not self._stop.is_set() and not link.lost.is_set():
            self._wake.clear()
            if (
                self._ack_deadline is not None
                and loop.time() >= self._ack_deadline
                and self._sent_top() > self.acked_seq
            ):
                self._resend_after_timeout()
            room = self.acked_seq + self._window() - self.sent_upto
            progressed = False
            if room > 0 and self._live is None:
                rows = self._take_fresh(self.sent_upto + 1, min(room, cfg.read_chunk))
                if rows:
                    await self._publish(link, rows, live=False)
                    progressed = True
            if not progressed:
                progressed = await self._publish_live(link)
                if room > 0 and self.sent_upto < self._backlog_top():
                    progressed = await self._publish_backlog(link, room) or progressed
            if progressed:
                continue
            timeout = cfg.idle_wait_s
            if self._ack_deadline is not None:
                timeout = max(0.0, min(timeout, self._ack_deadline - loop.time()))
            # A timer that sets the event is much cheaper than wait_for's task per idle turn.
            timer = loop.call_later(timeout, self._wake.set)
            await self._wake.wait()
            timer.cancel()

    def _backlog_top(self) -> int:
        """The last row the backlog lane should read from the outbox.

        Rows the worker has committed but not yet handed to `_on_commit` are on their way to
        the fresh lane (and wake us): reading them back would race their delivery, cost a
        round trip to the worker and delay them by it. Rows beyond what the worker committed
        (appended by someone else) are read.
        """
        top = self.outbox.last_seq
        worker = self._worker
        if worker is not None and worker.delivered_upto < top <= worker.committed_upto:
            return worker.delivered_upto
        return top

    def _window(self) -> int:
        cfg = self.config
        wanted = int(self._ack_rate * cfg.queue_target_s)
        return max(cfg.min_unacked_rows, min(cfg.max_unacked_rows, wanted))

    def _sent_top(self) -> int:
        return max(self.sent_upto, self._live[1] if self._live else 0)

    def _restart_from_ack(self) -> None:
        self.sent_upto = self.acked_seq
        self._live = None
        self._ack_deadline = None

    async def _publish_backlog(self, link: MqttClient, room: int) -> bool:
        """Read the next backlog chunk from the outbox and publish it; merge lanes at the end."""
        assert self._worker is not None
        upto = self._live[0] - 1 if self._live else _NO_LIMIT
        if self.sent_upto < upto:
            limit = min(room, self.config.read_chunk)
            try:
                rows = await self._worker.read(self.sent_upto, limit, upto)
            except OutboxError as error:
                log.error("uplink: reading the backlog failed", extra={"error": str(error)})
                return False
            # An ack that arrived during the read may already cover some of these rows.
            rows = [row for row in rows if row.seq > self.sent_upto]
            if rows:
                await self._publish(link, rows, live=False)
                if len(rows) == limit and self.sent_upto < upto:
                    return True
        if self._live is not None and not link.lost.is_set():
            # Nothing left below the live lane's first row: the lanes merge.
            self.sent_upto = max(self.sent_upto, self._live[1])
            self._live = None
            return True
        return False

    async def _publish_live(self, link: MqttClient) -> bool:
        """Send fresh rows ahead of the backlog, within their own bound."""
        cfg = self.config
        fresh = self._fresh
        if not fresh or link.lost.is_set():
            return False
        if self._live is None:
            while fresh and fresh[0].seq <= self.sent_upto:
                fresh.popleft()
            if not fresh or fresh[0].seq == self.sent_upto + 1:
                return False  # in order, no backlog before it: not a live-lane case
            lo = first = fresh[0].seq
        else:
            lo, first = self._live[0], self._live[1] + 1
        budget = cfg.max_unacked_rows - (first - lo)
        if budget <= 0:
            return False
        rows = self._take_live(first, min(budget, cfg.batch_max_events * 4))
        if not rows:
            return False
        self._live = (lo, rows[-1].seq)
        self.live_events += len(rows)
        await self._publish(link, rows, live=True)
        return True

    def _take_live(self, first: int, count: int) -> list[Row]:
        fresh = self._fresh
        # Rows before `first` may still be needed in order by the backlog lane later; they are
        # in the outbox too, so the memory copy can go.
        while fresh and fresh[0].seq < first:
            fresh.popleft()
        if not fresh or fresh[0].seq != first:
            return []
        return list(islice(fresh, count))

    def _resend_after_timeout(self) -> None:
        if not self._stall_logged:
            log.warning(
                "uplink: hub ack overdue, resending from acked + 1",
                extra={"acked_seq": self.acked_seq, "sent_upto": self._sent_top(),
                       "ack_timeout_s": self.config.ack_timeout_s},
            )
            self._stall_logged = True
        self.resends += 1
        self._restart_from_ack()

    async def _publish(self, link: MqttClient, rows: list[Row], *, live: bool) -> None:
        """Publish `rows` (consecutive seqs) as batch messages; advance `sent_upto` unless live."""
        cfg = self.config
        limit = cfg.inflight_max if live else cfg.inflight_max - cfg.live_reserve
        index = 0
        loop = asyncio.get_running_loop()
        while index < len(rows):
            group = [rows[index]]
            size = 2 + len(rows[index].body)  # the batch's brackets
            index += 1
            while index < len(rows) and len(group) < cfg.batch_max_events:
                extra = len(rows[index].body) + 1  # body and comma
                if size + extra > MAX_EVENT_BYTES:
                    break
                group.append(rows[index])
                size += extra
                index += 1
            if link.outstanding >= limit:
                await self._wait_room(link, limit)
            if link.lost.is_set() or self._stop.is_set():
                return
            payload, props = _message(group)
            try:
                link.publish(self._events_topic, payload, properties=props)
            except MqttError:
                return
            if not live:
                self.sent_upto = group[-1].seq
            self.published_events += len(group)
            self.published_messages += 1
            if self._ack_deadline is None:
                self._ack_deadline = loop.time() + cfg.ack_timeout_s
            if not live and self._fresh and self._live is not None:
                # Let fresh packets cut in between backlog messages.
                await self._publish_live(link)

    async def _wait_room(self, link: MqttClient, limit: int) -> None:
        """Room in the in-flight window, or a stop: a broker that stops PUBACKing must not
        hold up a stop."""
        if self._stop.is_set():
            return
        room = asyncio.ensure_future(link.wait_room(limit))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((room, stop), return_when=asyncio.FIRST_COMPLETED)
        room.cancel()
        stop.cancel()

    # --- acknowledgements ---------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if message.topic != self._ack_topic:
            log.debug("uplink: message on an unexpected topic", extra={"topic": message.topic})
            return
        try:
            ack = json.loads(message.payload)
            epoch, text = ack["sourceepoch"], ack["sequence"]
        except (ValueError, KeyError, TypeError):
            log.warning("uplink: malformed hub ack ignored",
                        extra={"payload": bytes(message.payload[:200])})
            return
        if not isinstance(text, str) or not text.isdigit() or not isinstance(epoch, str):
            log.warning("uplink: hub ack with a bad sequence ignored", extra={"sequence": text})
            return
        self._on_ack(epoch, text)

    def _on_ack(self, epoch: str, text: str) -> None:
        if epoch != self.epoch:
            # An ack for an older outbox (its session outlived a re-created file) or another
            # gateway's mix-up: never delete on it. Log once per foreign epoch.
            if epoch != self._foreign_epoch_logged:
                log.warning(
                    "uplink: hub ack for another epoch ignored",
                    extra={"ack_epoch": epoch, "epoch": self.epoch},
                )
                self._foreign_epoch_logged = epoch
            return
        seq = int(text)
        if seq <= self.acked_seq:
            return
        if seq > self.outbox.last_seq:
            log.warning(
                "uplink: hub ack beyond the last allocated sequence ignored",
                extra={"ack_seq": seq, "last_seq": self.outbox.last_seq},
            )
            return
        now = asyncio.get_running_loop().time()
        if self._ack_at is not None and 0 < now - self._ack_at < 2.0:
            instant = (seq - self.acked_seq) / max(now - self._ack_at, 1e-3)
            self._ack_rate = 0.8 * self._ack_rate + 0.2 * instant
        self._ack_at = now
        self.acked_seq = seq
        self.sent_upto = max(self.sent_upto, seq)
        if self._live is not None and seq >= self._live[0] - 1:
            self.sent_upto = max(self.sent_upto, self._live[1])
            self._live = None
        self._stall_logged = False
        self._ack_deadline = (
            asyncio.get_running_loop().time() + self.config.ack_timeout_s
            if self._sent_top() > seq
            else None
        )
        if self._worker is not None:
            self._worker.ack(seq)
        self._wake.set()
        if self.on_ack is not None:
            self.on_ack(seq)

    def _on_deleted(self, upto: int) -> None:
        if upto <= self.deleted_upto:
            return
        self.deleted_upto = upto
        for seq, future in self._ack_waiters:
            if seq <= upto and not future.done():
                future.set_result(None)


_LOCAL_PARAM = b'"class":"local"'  # as sync.packet.render writes it (compact JSON)


def for_uplink(body: bytes) -> bytes:
    """The event as it may leave the gateway: params of class `local` removed (and `params`
    itself when nothing is left). Bodies without one are passed as they are, byte for byte."""
    if _LOCAL_PARAM not in body:
        return body
    try:
        event = json.loads(body)
        params = event["data"]["params"]
        kept = {name: p for name, p in params.items() if p.get("class") != "local"}
    except (ValueError, KeyError, TypeError, AttributeError):
        return body  # the marker was inside a value, not a param's class
    if len(kept) == len(params):
        return body
    if kept:
        event["data"]["params"] = kept
    else:
        del event["data"]["params"]
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _message(group: list[Row]) -> tuple[bytes, Properties]:
    """One event as itself, several as a CloudEvents batch (a JSON array of the bodies)."""
    if len(group) == 1:
        seq, event_id, kind, body = group[0]
        body = for_uplink(body)
        if not kind:
            kind = _kind_of(body, seq)
        user = [("id", event_id), ("type", kind), ("sequence", format_sequence(seq))]
        if len(body) > MAX_EVENT_BYTES:
            log.error("uplink: event exceeds the 64 KiB cap", extra={"seq": seq,
                                                                     "bytes": len(body)})
        return body, publish_properties(CONTENT_TYPE, user)
    first, last = group[0].seq, group[-1].seq
    payload = b"[" + b",".join(for_uplink(row.body) for row in group) + b"]"
    user = [
        ("sequence", f"{format_sequence(first)}-{format_sequence(last)}"),
        ("count", str(len(group))),
    ]
    return payload, publish_properties(BATCH_CONTENT_TYPE, user)


def _kind_of(body: bytes, seq: int) -> str:
    """The event type of a row stored without its kind (written before the column existed)."""
    try:
        return str(json.loads(body)["type"])
    except (ValueError, KeyError, TypeError):
        log.warning("uplink: outbox row is not a JSON event", extra={"seq": seq})
        return ""


def _check_subscription(reasons: list[ReasonCode]) -> None:
    failed = [str(r) for r in reasons if r.is_failure]
    if failed:
        # Without the ack subscription nothing is ever deleted: loud, but keep publishing.
        log.error("uplink: ack subscription refused", extra={"reasons": failed})


def _log_refused(reason: ReasonCode) -> None:
    # Not fatal: the row stays until the hub acks it and the ack timeout resends it.
    log.warning("uplink: broker refused a publish", extra={"reason": str(reason)})
