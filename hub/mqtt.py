"""The hub's MQTT 5 connection: paho-mqtt 2.x on its own network thread, bridged to asyncio.

- Incoming messages cross to the event loop through a bounded hand-off: paho's thread takes a
  slot (waiting when all are taken, which pushes back on the broker over TCP instead of dropping)
  and `call_soon_threadsafe` puts the message on the loop's queue; the consumer frees the slot.
- Every QoS 1 publish gets a future keyed by message id, resolved from paho's thread with
  `call_soon_threadsafe` when the PUBACK arrives (the aiomqtt way).
- Persistent session (`clean_start=False` + session expiry): messages wait while the hub is away.
- Manual acknowledgement of ingested messages: the hub PUBACKs an event message only after the
  database commit (`ack`), so a hub that dies mid-batch gets it again from its broker session
  instead of waiting for the edge's resend timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hub.config import MqttSection, read_secret
from sync import topics

log = logging.getLogger(__name__)

# paho rescans its in-flight set on every PUBACK (`_update_inflight`, ~1/3 of its PUBACK
# cost at 50); FIELD-NOTES: 20 is the fastest window.
_INFLIGHT_WINDOW = 20
# A PUBACK that arrives before its publisher registered the message id is kept this long.
_EARLY_TTL_S = 60.0


class PublishError(RuntimeError):
    """The broker refused a publish, or paho could not queue it."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from the broker, as the event loop receives it."""

    topic: str
    payload: bytes
    received_at: float
    mid: int
    qos: int


def publish_properties(
    content_type: str,
    user: list[tuple[str, str]] | None = None,
    expiry_s: int | None = None,
) -> Properties:
    """MQTT 5 PUBLISH properties: content type, UTF-8 payload flag, user properties, expiry."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    props.PayloadFormatIndicator = 1
    if user:
        props.UserProperty = user
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


class PackedProperties(Properties):
    """PUBLISH properties packed once by `packed_properties`.

    paho packs a message's properties on every publish (~30 us) and building a `Properties`
    costs ~40 us more: together more than paho's own cost per message, on the fan-out's hot
    path. paho only calls `pack()` on outgoing properties, so this subclass answers it from
    bytes computed once.
    """

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        digit, value = value % 128, value // 128
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


_PACKED_TEMPLATE = PackedProperties(PacketTypes.PUBLISH).__dict__


@functools.lru_cache(maxsize=64)
def _fixed_part(content_type: str, expiry_s: int | None) -> bytes:
    body = b"\x01\x01"
    if expiry_s is not None:
        body += b"\x02" + expiry_s.to_bytes(4, "big")
    return body + b"\x03" + _utf8(content_type)


@functools.lru_cache(maxsize=64)
def _user_key(key: str) -> bytes:
    return b"\x26" + _utf8(key)


def packed_properties(
    content_type: str,
    user: list[tuple[str, str]] | None = None,
    expiry_s: int | None = None,
) -> Properties:
    """The same properties as `publish_properties`, about ten times cheaper to make and send.

    Encoded in the order paho uses (by property identifier): Payload Format Indicator (1),
    Message Expiry Interval (2), Content Type (3), User Property (38).
    """
    body = _fixed_part(content_type, expiry_s)
    for key, value in user or ():
        body += _user_key(key) + _utf8(value)
    # A copy of a template's attributes, without running Properties.__init__ or copy.copy
    # (both show on the fan-out's profile); set through __dict__ because
    # Properties.__setattr__ validates names and would refuse `_packed`.
    props = PackedProperties.__new__(PackedProperties)
    props.__dict__.update(_PACKED_TEMPLATE, ContentType=content_type, PayloadFormatIndicator=1,
                          _packed=_varint(len(body)) + body)
    if user:
        props.__dict__["UserProperty"] = list(user)
    if expiry_s is not None:
        props.__dict__["MessageExpiryInterval"] = expiry_s
    return props


class HubMqtt:
    """One paho client for ingest, acks and fan-out."""

    def __init__(self, config: MqttSection, hub_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.hub_id = hub_id
        self.loop = loop
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        # The bound of the hand-off (the asyncio queue itself never holds more than this).
        self._slots = threading.BoundedSemaphore(config.ingest_queue)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[None] | None] = {}
        self._early: dict[int, tuple[float, ReasonCode]] = {}
        self._settled: list[tuple[asyncio.Future[None], ReasonCode]] = []
        self._settle_scheduled = False

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.username is not None:
            password = read_secret(config.password_file) if config.password_file else None
            client.username_pw_set(config.username, password)
        client.max_inflight_messages_set(_INFLIGHT_WINDOW)
        client.reconnect_delay_set(1, 30)
        client.will_set(
            topics.hub_status(),
            self._status_payload(online=False),
            qos=1,
            retain=True,
            properties=publish_properties("application/json"),
        )
        # Set once the broker has confirmed the ingest subscription (tests, benchmarks).
        self.subscribed = threading.Event()
        client.on_subscribe = self._on_subscribe
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with backoff on its own."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    async def close(self, grace_s: float = 3.0) -> None:
        """Publish the retained offline status, wait for its PUBACK briefly, disconnect."""
        self._closing.set()
        if self.client.is_connected():
            done = self.publish(
                topics.hub_status(),
                self._status_payload(online=False),
                retain=True,
                properties=publish_properties("application/json"),
            )
            try:
                await asyncio.wait_for(done, grace_s)
            except (TimeoutError, PublishError):
                log.warning("hub offline status not acknowledged", extra={"grace_s": grace_s})
        # A clean DISCONNECT discards the will (we already said offline).
        self.client.disconnect()
        # loop_stop joins paho's thread; keep that join off the event loop.
        await asyncio.to_thread(self.client.loop_stop)

    def _status_payload(self, *, online: bool) -> bytes:
        return json.dumps({"online": online, "hub": self.hub_id, "ts": time.time()}).encode()

    # -- paho callbacks (paho's network thread) -------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
        reason_code: ReasonCode, _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub", extra={"reason": str(reason_code)})
            return
        log.info(
            "hub connected to broker",
            extra={"host": self.config.host, "port": self.config.port,
                   "session_present": flags.session_present},
        )
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # paho leaves Nagle on; with small QoS 1 messages it adds tens of ms per round trip
            # (FIELD-NOTES: p50 6.7 ms -> 0.25 ms), which the PUBACK-gated fan-out pays per step.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Subscribing again is harmless with a resumed session and required without one.
        client.subscribe(
            [(topics.hub_ingest_subscription(self.config.share_group), 1),
             (topics.hub_status_subscription(), 1)],
        )
        self.publish_nowait(
            topics.hub_status(), self._status_payload(online=True), retain=True,
            properties=publish_properties("application/json"),
        )

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reason_codes: list[ReasonCode], _properties: Properties | None) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker refused the hub's subscriptions", extra={"reasons": refused})
            return
        self.subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode, _properties: Properties | None,
    ) -> None:
        if not self._closing.is_set():
            log.warning("hub lost the broker; paho reconnects",
                        extra={"reason": str(reason_code)})

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            self._log_status(msg)
            self.client.ack(msg.mid, msg.qos)
            return
        # Wait for a slot: paho stops reading the socket, the broker holds the rest.
        while not self._slots.acquire(timeout=0.5):
            if self._closing.is_set():
                return  # never stored, never acked: the edge sends it again
        item = Inbound(msg.topic, bytes(msg.payload), time.time(), msg.mid, msg.qos)
        if not self._call(self.inbox.put_nowait, item):
            self._slots.release()

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int,
        reason_code: ReasonCode, _properties: Properties | None,
    ) -> None:
        with self._lock:
            if mid not in self._pending:
                # PUBACK before the publisher registered the id (it publishes without our lock,
                # because paho calls us while holding its own).
                self._early[mid] = (time.monotonic(), reason_code)
                return
            future = self._pending.pop(mid)
            if future is None:
                return
            # One wake-up of the loop per burst of PUBACKs, not one per message: each
            # call_soon_threadsafe writes to the loop's self-pipe (measured: 5 % of the hub's
            # CPU at 20,000 messages/s).
            self._settled.append((future, reason_code))
            if self._settle_scheduled:
                return
            self._settle_scheduled = True
        if not self._call(self._settle_all):
            with self._lock:
                self._settle_scheduled = False

    def _settle_all(self) -> None:
        with self._lock:
            settled, self._settled = self._settled, []
            self._settle_scheduled = False
        for future, reason_code in settled:
            _settle(future, reason_code)

    def _log_status(self, msg: mqtt.MQTTMessage) -> None:
        gateway = topics.gateway_from_up_topic(msg.topic)
        try:
            status = json.loads(msg.payload) if msg.payload else {}
        except (ValueError, UnicodeDecodeError):
            status = {}
        if not isinstance(status, dict):
            status = {}
        log.info(
            "gateway %s", "online" if status.get("online") else "offline",
            extra={"gateway": gateway, "session": status.get("session"),
                   "last_sequence": status.get("lastSequence")},
        )

    def _call(self, func: Any, *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed: we are shutting down
            return False
        return True

    # -- event loop side ------------------------------------------------------------------

    def taken(self) -> None:
        """The consumer took one message off `inbox`: free its hand-off slot."""
        self._slots.release()

    def ack(self, messages: Iterable[Inbound]) -> None:
        """PUBACK ingested messages (after their commit), in the order they were received."""
        for message in messages:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[None]:
        """Publish QoS 1; the future completes on PUBACK (or fails on a refusing reason code)."""
        future: asyncio.Future[None] = self.loop.create_future()
        self._send(topic, payload, retain, properties, future)
        return future

    def publish_nowait(
        self, topic: str, payload: bytes, *, retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish QoS 1 without waiting for the PUBACK (acks: the edge resends if lost)."""
        self._send(topic, payload, retain, properties, None)

    def _send(
        self, topic: str, payload: bytes, retain: bool, properties: Properties | None,
        future: asyncio.Future[None] | None,
    ) -> None:
        started = time.monotonic()
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        # NO_CONN still queues the message in paho; it goes out after the reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            if future is not None:
                future.set_exception(PublishError(f"{topic}: paho refused ({info.rc.name})"))
            return
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None or early[0] < started:
                # An early entry older than this publish belongs to an abandoned earlier use.
                self._pending[info.mid] = future
                early = None
            if len(self._early) > 1000:
                cutoff = time.monotonic() - _EARLY_TTL_S
                self._early = {m: e for m, e in self._early.items() if e[0] >= cutoff}
        if early is not None and future is not None:
            _settle(future, early[1])

    def forget(self, futures: list[asyncio.Future[None]]) -> None:
        """Stop tracking futures that a caller gave up on (their ids may be reused later)."""
        dropped = {id(f) for f in futures if not f.done()}
        if not dropped:
            return
        with self._lock:
            for mid in [m for m, f in self._pending.items() if id(f) in dropped]:
                del self._pending[mid]
        for future in futures:
            if not future.done():
                future.cancel()


def _settle(future: asyncio.Future[None], reason_code: ReasonCode) -> None:
    if future.done():
        return
    if reason_code.is_failure:
        future.set_exception(PublishError(f"broker refused the publish: {reason_code}"))
    else:
        future.set_result(None)
