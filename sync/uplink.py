"""The uplink: drains the edge outbox to the broker over MQTT 5; rows go only on the hub's ack.

Delivery (ARCHITECTURE.md, "Delivery guarantees" 2-3): pending rows are published in seq order
with QoS 1. A PUBACK only means the broker took the message; the rows are deleted when the hub
acknowledges on `keyop/v1/down/{gateway}/ack` the highest contiguous sequence it has stored.
When that ack does not advance for `ack_timeout_s`, or after any reconnect, publishing restarts
at acked + 1 with the very same bytes (same id, epoch and sequence), so the hub can dedupe.

Threads: paho runs its network loop on its own thread (`loop_start`); every callback only hands
its arguments to the event loop with `call_soon_threadsafe`. SQLite reads and deletes run in
worker threads. The reconnect loop is `Uplink.run`: one fresh paho client per connection, so no
paho-side replay mixes with our own resend from acked + 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from ulid import ULID

from edge_store import Outbox, OutboxError
from sync import topics
from sync.packet import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    MAX_EVENT_BYTES,
    format_sequence,
    format_time,
)

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STATUS_CONTENT_TYPE = "application/json"


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
    """MQTT messages awaiting PUBACK; FIELD-NOTES: keep 20-100 (paho rescans on every PUBACK)."""
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    username: str | None = None
    password: str | None = None
    max_unacked_rows: int = 5_000
    """Rows published beyond the hub's ack before the sender waits for the hub."""
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
        if self.batch_max_events < 1 or self.max_unacked_rows < 1:
            raise ValueError("batch_max_events and max_unacked_rows must be >= 1")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError(
                f"backoff_min_s ({self.backoff_min_s}) must be > 0 and <= backoff_max_s "
                f"({self.backoff_max_s})"
            )

    @property
    def client_id(self) -> str:
        return f"keyop-edge-{self.gateway}"


class UplinkError(Exception):
    """Base of the uplink's errors."""


class ConnectRefused(UplinkError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"broker refused the connection: {reason} ({reason.value})")
        self.reason = reason


class LinkLost(UplinkError):
    """The connection ended while something was waiting on it."""


def _publish_props(content_type: str, user: list[tuple[str, str]]) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    props.PayloadFormatIndicator = 1
    if user:
        props.UserProperty = user
    return props


class _Link:
    """One MQTT connection: its paho client and the futures the event loop keeps for it.

    The `_on_*` methods run on paho's network thread and only forward to the loop.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: mqtt.Client,
        session: str,
        on_message: Callable[[str, bytes], None],
        wake: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.client = client
        self.session = session
        self.connack: asyncio.Future[ReasonCode] = loop.create_future()
        self.lost = asyncio.Event()
        self.inflight: dict[int, asyncio.Future[ReasonCode]] = {}
        self._on_message_cb = on_message
        self._wake = wake
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open

    # --- paho network thread -------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.loop.call_soon_threadsafe(self._connected, reason)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self.loop.call_soon_threadsafe(self._disconnected, reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.loop.call_soon_threadsafe(self._puback, mid, reason)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self._on_message_cb, message.topic, bytes(message.payload))

    def _on_subscribe(
        self, _c: Any, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            # Without the ack subscription nothing is ever deleted: loud, but keep publishing.
            log.error("uplink: ack subscription refused", extra={"reasons": failed})

    @staticmethod
    def _on_socket_open(_c: Any, _u: Any, sock: Any) -> None:
        # Neither paho nor Mosquitto disables Nagle; with it, each small publish waits up to
        # ~40 ms for the previous one's ACK (FIELD-NOTES: p50 6.7 ms -> 0.25 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    # --- event loop --------------------------------------------------------------------------

    def _connected(self, reason: ReasonCode) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def _disconnected(self, reason: ReasonCode) -> None:
        self.lost.set()
        if not self.connack.done():
            self.connack.set_exception(LinkLost(f"connection closed before CONNACK: {reason}"))
        self.fail_inflight()
        self._wake()

    def _puback(self, mid: int, reason: ReasonCode) -> None:
        future = self.inflight.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)
        if reason.is_failure:
            # Not fatal: the row stays until the hub acks it and the ack timeout resends it.
            log.warning(
                "uplink: broker refused a publish", extra={"mid": mid, "reason": str(reason)}
            )

    def fail_inflight(self) -> None:
        for future in self.inflight.values():
            if not future.done():
                future.cancel()
        self.inflight.clear()

    def publish(
        self, topic: str, payload: bytes, props: Properties, *, retain: bool = False
    ) -> asyncio.Future[ReasonCode]:
        """QoS 1 publish; the future resolves on PUBACK (callbacks reach the loop only after
        this returns, so registering the future after `publish` cannot miss its PUBACK)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkLost(f"publish refused by the client: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[ReasonCode] = self.loop.create_future()
        self.inflight[info.mid] = future
        return future


class Uplink:
    """Drains one outbox to MQTT 5 until `stop()`.

    Counters (read them freely from the loop): `published_events`, `published_messages`,
    `acked_seq` (hub's highest ack), `deleted_upto`, `sent_upto`, `resends`, `reconnects`,
    `connected`. `on_ack` (optional) observes each advance of the hub's ack.
    """

    def __init__(self, config: UplinkConfig, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.epoch = outbox.epoch
        self.published_events = 0
        self.published_messages = 0
        self.acked_seq = 0
        self.deleted_upto = 0
        self.sent_upto = 0
        self.resends = 0
        self.reconnects = 0
        self.connected = False
        self.on_ack: Callable[[int], None] | None = None
        """Called on the loop with the new acked seq whenever the hub's ack advances."""
        self._link: _Link | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ack_pending = asyncio.Event()
        self._deleted = asyncio.Condition()
        self._done = asyncio.Event()
        self._running = False
        self._ack_deadline: float | None = None
        self._stall_logged = False
        self._foreign_epoch_logged: str | None = None
        self._ack_topic = topics.down_ack(config.gateway)
        self._events_topic = topics.up_events(config.gateway)
        self._status_topic = topics.up_status(config.gateway)

    # --- public API -------------------------------------------------------------------------

    def wake(self) -> None:
        """New rows were committed: publish them now (call from the event loop thread)."""
        self._wake.set()

    async def stop(self) -> None:
        """Publish the offline status, disconnect cleanly and wait for `run()` to return."""
        self._stop.set()
        self._wake.set()
        if self._running:
            await self._done.wait()

    async def wait_acked(self, seq: int, timeout: float) -> bool:
        """Wait until rows up to `seq` are acknowledged by the hub and deleted; False on timeout."""
        async with self._deleted:
            try:
                await asyncio.wait_for(
                    self._deleted.wait_for(lambda: self.deleted_upto >= seq), timeout
                )
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        """Connect, publish, resend and reconnect until `stop()`; the reconnect loop lives here."""
        self._running = True
        self._done.clear()
        stats = await asyncio.to_thread(self.outbox.stats)
        # Everything before the first pending row was acknowledged in an earlier run.
        start = stats.last_seq if stats.first_pending_seq is None else stats.first_pending_seq - 1
        self.acked_seq = self.deleted_upto = self.sent_upto = start
        ack_task = asyncio.create_task(self._ack_worker(), name="uplink-ack")
        failures = 0
        ever_connected = False
        down_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    link = await self._connect()
                except (OSError, UplinkError, TimeoutError) as error:
                    failures += 1
                    if down_since is None:
                        down_since = time.monotonic()
                        log.error(
                            "uplink: cannot connect to broker",
                            extra={"host": self.config.host, "port": self.config.port,
                                   "error": str(error)},
                        )
                    else:
                        log.debug("uplink: connect retry failed", extra={"error": str(error)})
                    await self._backoff(failures)
                    continue
                if down_since is not None:
                    log.info(
                        "uplink: connection recovered",
                        extra={"outage_s": round(time.monotonic() - down_since, 3),
                               "attempts": failures},
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
                    clean = self._stop.is_set() and not link.lost.is_set()
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
                    failures += 1
                    await self._backoff(failures)
                else:
                    failures = 0
        finally:
            ack_task.cancel()
            # A delete already running in its worker thread finishes on its own; only the
            # task's wait is cancelled here.
            await asyncio.gather(ack_task, return_exceptions=True)
            self.connected = False
            self._running = False
            self._done.set()

    # --- connection ---------------------------------------------------------------------------

    async def _backoff(self, failures: int) -> None:
        """Exponential backoff with full jitter; returns early on stop."""
        cfg = self.config
        cap = min(cfg.backoff_max_s, cfg.backoff_min_s * 2 ** min(failures - 1, 30))
        delay = random.uniform(cfg.backoff_min_s, cap)
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

    async def _connect(self) -> _Link:
        cfg = self.config
        loop = asyncio.get_running_loop()
        # reconnect_on_failure=False: paho's thread ends with the connection and this class
        # reconnects, so backoff, logging and resend-from-ack stay in one visible place.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(cfg.inflight_max)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        # A session id per connection: the hub ignores a late will of an older connection.
        session = str(ULID())
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.ContentType = STATUS_CONTENT_TYPE
        will_props.PayloadFormatIndicator = 1
        client.will_set(
            self._status_topic, self._status(False, session), qos=1, retain=True,
            properties=will_props,
        )
        link = _Link(loop, client, session, self._on_message, self._wake.set)
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = int(cfg.session_expiry_s)
        # clean_start=False always, also on the first connect of a process: the broker-side
        # session holds the ack subscription and the acks the hub sent while we were away
        # (or restarting), which saves resending what the hub already has. Stale acks of an
        # older epoch are filtered out by `_on_message`.
        await asyncio.to_thread(
            client.connect, cfg.host, cfg.port, int(cfg.keepalive_s),
            clean_start=False, properties=connect_props,
        )
        client.loop_start()
        try:
            reason = await asyncio.wait_for(link.connack, cfg.connect_timeout_s)
            if reason.is_failure:
                raise ConnectRefused(reason)
        except BaseException:
            await self._close_link(link, clean=False)
            raise
        self._link = link
        return link

    async def _close_link(self, link: _Link, *, clean: bool) -> None:
        """End a connection; a clean stop says offline first (a clean DISCONNECT sends no will)."""
        self.connected = False
        if clean:
            confirmed = False
            try:
                done = link.publish(
                    self._status_topic, self._status(False, link.session),
                    _publish_props(STATUS_CONTENT_TYPE, []), retain=True,
                )
                await asyncio.wait({done}, timeout=self.config.stop_timeout_s)
                confirmed = done.done() and not done.cancelled()
            except LinkLost:
                pass
            if not confirmed:
                log.warning("uplink: offline status not confirmed before disconnect")
            link.client.disconnect()
        # Joining paho's thread blocks: do it in a worker thread.
        await asyncio.to_thread(link.client.loop_stop)
        link.fail_inflight()
        if self._link is link:
            self._link = None

    # --- publishing ---------------------------------------------------------------------------

    async def _serve(self, link: _Link) -> None:
        """Publish until the connection is lost or stop is requested."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        link.client.subscribe(self._ack_topic, qos=1)
        link.publish(
            self._status_topic, self._status(True, link.session),
            _publish_props(STATUS_CONTENT_TYPE, []), retain=True,
        )
        self.connected = True
        # Whatever was in flight on the old connection may be lost: start again after the ack.
        if self.sent_upto > self.acked_seq:
            self.resends += 1
        self.sent_upto = self.acked_seq
        self._ack_deadline = None
        while not self._stop.is_set() and not link.lost.is_set():
            self._wake.clear()
            now = loop.time()
            if (
                self._ack_deadline is not None
                and now >= self._ack_deadline
                and self.sent_upto > self.acked_seq
            ):
                self._resend_after_timeout()
            room = self.acked_seq + cfg.max_unacked_rows - self.sent_upto
            rows: list[tuple[int, bytes]] = []
            if room > 0:
                limit = min(room, cfg.batch_max_events * cfg.inflight_max)
                rows = await asyncio.to_thread(self.outbox.pending, self.sent_upto, limit)
                # An ack that arrived during the read may already cover some of these rows.
                rows = [row for row in rows if row[0] > self.acked_seq]
            if rows:
                await self._publish_rows(link, rows)
                continue
            timeout = cfg.idle_wait_s
            if self._ack_deadline is not None:
                timeout = max(0.0, min(timeout, self._ack_deadline - loop.time()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _resend_after_timeout(self) -> None:
        if not self._stall_logged:
            log.warning(
                "uplink: hub ack overdue, resending from acked + 1",
                extra={"acked_seq": self.acked_seq, "sent_upto": self.sent_upto,
                       "ack_timeout_s": self.config.ack_timeout_s},
            )
            self._stall_logged = True
        self.resends += 1
        self.sent_upto = self.acked_seq
        self._ack_deadline = None

    async def _publish_rows(self, link: _Link, rows: list[tuple[int, bytes]]) -> None:
        cfg = self.config
        index = 0
        while index < len(rows):
            group = [rows[index]]
            size = 2 + len(rows[index][1])  # the batch's brackets
            index += 1
            while index < len(rows) and len(group) < cfg.batch_max_events:
                extra = len(rows[index][1]) + 1  # body and comma
                if size + extra > MAX_EVENT_BYTES:
                    break
                group.append(rows[index])
                size += extra
                index += 1
            # Respect the in-flight window: wait for PUBACKs (or the end of the connection).
            while len(link.inflight) >= cfg.inflight_max and not link.lost.is_set():
                await asyncio.wait(set(link.inflight.values()), return_when=asyncio.FIRST_COMPLETED)
            if link.lost.is_set() or self._stop.is_set():
                return
            payload, props = self._message(group)
            try:
                link.publish(self._events_topic, payload, props)
            except LinkLost:
                return
            self.sent_upto = group[-1][0]
            self.published_events += len(group)
            self.published_messages += 1
            if self._ack_deadline is None:
                self._ack_deadline = asyncio.get_running_loop().time() + cfg.ack_timeout_s

    @staticmethod
    def _message(group: list[tuple[int, bytes]]) -> tuple[bytes, Properties]:
        """One event as itself, several as a CloudEvents batch (a JSON array of the bodies)."""
        if len(group) == 1:
            seq, body = group[0]
            user = [("sequence", format_sequence(seq))]
            try:
                event = json.loads(body)
                user = [("id", str(event["id"])), ("type", str(event["type"])), *user]
            except (ValueError, KeyError, TypeError):
                log.warning("uplink: outbox row is not a JSON event", extra={"seq": seq})
            if len(body) > MAX_EVENT_BYTES:
                log.error("uplink: event exceeds the 64 KiB cap", extra={"seq": seq,
                                                                         "bytes": len(body)})
            return body, _publish_props(CONTENT_TYPE, user)
        first, last = group[0][0], group[-1][0]
        payload = b"[" + b",".join(body for _, body in group) + b"]"
        user = [
            ("sequence", f"{format_sequence(first)}-{format_sequence(last)}"),
            ("count", str(len(group))),
        ]
        return payload, _publish_props(BATCH_CONTENT_TYPE, user)

    # --- acknowledgements ---------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self._ack_topic:
            log.debug("uplink: message on an unexpected topic", extra={"topic": topic})
            return
        try:
            ack = json.loads(payload)
            epoch, text = ack["sourceepoch"], ack["sequence"]
        except (ValueError, KeyError, TypeError):
            log.warning("uplink: malformed hub ack ignored", extra={"payload": payload[:200]})
            return
        if not isinstance(text, str) or not text.isdigit():
            log.warning("uplink: hub ack with a bad sequence ignored", extra={"sequence": text})
            return
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
        self.acked_seq = seq
        self.sent_upto = max(self.sent_upto, seq)
        self._stall_logged = False
        self._ack_deadline = (
            asyncio.get_running_loop().time() + self.config.ack_timeout_s
            if self.sent_upto > seq
            else None
        )
        self._ack_pending.set()
        self._wake.set()
        if self.on_ack is not None:
            self.on_ack(seq)

    async def _ack_worker(self) -> None:
        """Delete acknowledged rows off the loop; acks arriving meanwhile coalesce into one."""
        while True:
            await self._ack_pending.wait()
            self._ack_pending.clear()
            target = self.acked_seq
            if target <= self.deleted_upto:
                continue
            try:
                await asyncio.to_thread(self.outbox.ack, target)
            except OutboxError as error:
                # The rows stay; the next ack deletes them too (ack is a range delete).
                log.error("uplink: deleting acknowledged rows failed",
                          extra={"ack_seq": target, "error": str(error)})
                continue
            async with self._deleted:
                self.deleted_upto = target
                self._deleted.notify_all()
