"""The hub's MQTT 5 connection: one `common.mqtt.MqttClient` for ingest, acks and fan-out.

The adapter serves paho from the hub's event loop (no network thread, writes gathered once per
turn, TLS and the connect in a worker thread, a future per QoS 1 publish, the broker's Receive
Maximum as the in-flight window). What is the hub's own lives here:

- Incoming messages go on `inbox`. When it holds `ingest_queue` messages the socket is no longer
  read until the consumer has taken half of them (`taken`): the broker holds the rest, pushed
  back over TCP, instead of the hub dropping or buffering without bound.
- Persistent session (`clean_start=False` + session expiry): messages wait while the hub is away.
- Manual acknowledgement of ingested messages: the hub PUBACKs an event message only after the
  database commit (`ack`), so a hub that dies mid-batch gets it again from its broker session
  instead of waiting for the edge's resend timeout.
- The reconnect loop (`_stay_connected`): a lost connection is retried after 1 s, then after
  waits drawn with full jitter under a cap that doubles up to 30 s (`common.backoff`); after a
  connection that lived under 10 s, or one taken over by another with the same client id
  (reason 0x8E), the cap keeps growing. A takeover (0x8E, or three such short connections in a
  row: Mosquitto 2.0.11 closes the older connection without saying why) is logged at ERROR
  naming the client id: two holders of one id must not fight over it fast and unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.backoff import Backoff
from common.mqtt import ConnectionLost, MqttClient, PublishError
from common.mqtt_properties import publish_properties
from hub.config import MqttSection, read_secret
from sync import topics

__all__ = ["INFLIGHT_MAX", "HubMqtt", "Inbound", "PublishError"]

log = logging.getLogger(__name__)

# QoS 1 publishes in flight at once: 20 until the CONNACK, then what the broker's CONNACK
# allows (its Receive Maximum), up to this.
INFLIGHT_MAX = 100
_CONNECT_TIMEOUT_S = 10.0
_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 30.0
# MQTT 5 DISCONNECT reason: another connection with this client id took the session.
SESSION_TAKEN_OVER = 0x8E
SHARED_NOT_SUPPORTED = 0x9E  # SUBACK / DISCONNECT: "Shared Subscriptions not supported"
# Mosquitto 2.0.11 closes the older connection of a client id without that DISCONNECT, so a
# takeover also shows as connections lost this soon after their CONNACK, this many in a row.
_FLAP_S = 10.0
_FLAPS = 3


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from the broker, as the event loop receives it."""

    topic: str
    payload: bytes
    received_at: float
    mid: int
    qos: int


class HubMqtt:
    """One paho client for ingest, acks and fan-out. Create, `start` and use it on the loop."""

    def __init__(self, config: MqttSection, hub_id: str, loop: asyncio.AbstractEventLoop, *,
                 ingest: bool = True) -> None:
        self.config = config
        self.hub_id = hub_id
        self.loop = loop
        self.ingest = ingest  # subscribe to the uplink (a fan-out-only process does not)
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        # Set once the broker has confirmed the ingest subscription, or at the first CONNACK
        # when not ingesting (read by tests and benchmarks from other threads).
        self.subscribed = threading.Event()
        self._closing = asyncio.Event()
        self._lost = asyncio.Event()
        self._established = False  # this connection got a successful CONNACK
        self._unreachable = False  # a connect failed since the last CONNACK (logged once)
        self.takeovers = 0  # takeovers of this client id's session seen (or suspected)
        self._connected_at: float | None = None  # monotonic time of this connection's CONNACK
        self._flaps = 0  # connections lost within _FLAP_S of their CONNACK, in a row
        self._backoff = False  # the last connection ended short or taken over: no fast retry
        self._runner: asyncio.Task[None] | None = None
        self.no_shared = False  # the broker said it has no shared subscriptions (told once)

        password = (read_secret(config.password_file)
                    if config.username is not None and config.password_file else None)
        self.connection = connection = MqttClient(
            loop, config.client_id, inflight_max=INFLIGHT_MAX, manual_ack=True,
            username=config.username, password=password,
            tls=config.tls.tls() if config.tls is not None else None,
            connect_timeout_s=_CONNECT_TIMEOUT_S,
        )
        self.client = connection.client
        self.client.will_set(
            topics.hub_status(),
            self._status_payload(online=False),
            qos=1,
            retain=True,
            properties=publish_properties("application/json"),
        )
        connection.on_connect = self._on_connect
        connection.on_subscribe = self._on_subscribe
        connection.on_disconnect = self._on_disconnect
        connection.on_message = self._on_message
        connection.on_lost = self._lost.set

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and stay connected until `close`."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self.connection.configure(self.config.host, self.config.port, self.config.keepalive_s,
                                  clean_start=False, properties=props)
        self._runner = self.loop.create_task(self._stay_connected(), name="hub-mqtt")

    async def close(self, grace_s: float = 3.0) -> None:
        """Publish the retained offline status, wait for its PUBACK briefly, disconnect."""
        self._closing.set()
        if self.connection.is_connected():
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
            # A clean DISCONNECT discards the will (we already said offline); paho closes the
            # socket once it is written.
            self.connection.disconnect()  # written and sent at once
        # Ends the connection task's wait. A DISCONNECT still unsent when the socket is closed
        # below is no loss: the broker then publishes the will, which also says offline.
        self._lost.set()
        if self._runner is not None:
            # Bounded: a connect to an unreachable broker may still be waiting in its thread.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._runner), grace_s)
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self.connection.close_socket()

    async def _stay_connected(self) -> None:
        backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S)
        while not self._closing.is_set():
            self._lost.clear()
            self._established = False
            self._connected_at = None
            if await self._connect():
                await self._lost.wait()
            if self._closing.is_set():
                return
            self.connection.close_socket()  # already closed, unless paho missed the loss
            # Not straight back after a short-lived connection or a takeover: that would take
            # the session from another holder of the client id, which takes it back, and so
            # on, each takeover costing the hub its in-flight work.
            if self._established and not self._backoff:
                backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), backoff.next())

    async def _connect(self) -> bool:
        """Open the TCP (and TLS) connection in a thread, send CONNECT; False when that failed."""
        try:
            return await self.connection.open(unless=self._closing)
        except OSError as error:
            # Said once per outage; the retries after it stay quiet until the next CONNACK.
            level = logging.DEBUG if self._unreachable else logging.WARNING
            self._unreachable = True
            log.log(level, "hub cannot reach the broker; retrying",
                    extra={"host": self.config.host, "port": self.config.port,
                           "error": str(error)})
        except ConnectionLost as error:
            log.warning("hub lost the broker while connecting",
                        extra={"host": self.config.host, "error": str(error)})
        return False

    def _status_payload(self, *, online: bool) -> bytes:
        return json.dumps({"online": online, "hub": self.hub_id, "ts": time.time()}).encode()

    # -- paho callbacks (on the loop) -----------------------------------------------------

    def _on_connect(self, reason_code: ReasonCode, flags: mqtt.ConnectFlags,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub", extra={"reason": str(reason_code)})
            return
        self._established = True
        self._connected_at = time.monotonic()
        self._unreachable = False
        log.info(
            "hub connected to broker",
            extra={"host": self.config.host, "port": self.config.port,
                   "session_present": flags.session_present},
        )
        # Subscribing again is harmless with a resumed session and required without one.
        if self.ingest and getattr(properties, "SharedSubscriptionAvailable", 1) == 0:
            self._lacks_shared("its CONNACK says Shared Subscription Available = 0")
        if self.ingest and self.no_shared:
            pass  # connected but not ingesting, so not ready (told once in _lacks_shared)
        elif self.ingest:
            self.connection.subscribe(
                [(topics.hub_ingest_subscription(self.config.share_group), 1),
                 (topics.hub_status_subscription(), 1)],
            )
        else:
            # A resumed session may still hold the subscriptions of an ingesting past (same
            # client id): drop them, or the broker would keep handing this process packets.
            self.connection.unsubscribe([topics.hub_ingest_subscription(self.config.share_group),
                                         topics.hub_status_subscription()])
            self.subscribed.set()
        self.publish_nowait(
            topics.hub_status(), self._status_payload(online=True), retain=True,
            properties=publish_properties("application/json"),
        )

    def _on_subscribe(self, reason_codes: list[ReasonCode]) -> None:
        if any(code.value == SHARED_NOT_SUPPORTED for code in reason_codes):
            self._lacks_shared("it refused the subscription with reason 0x9E")
            return
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("broker refused the hub's subscriptions", extra={"reasons": refused})
            return
        self.subscribed.set()

    def _on_disconnect(self, reason_code: ReasonCode) -> None:
        if self._closing.is_set():
            self._lost.set()
            return
        lived = (time.monotonic() - self._connected_at if self._connected_at is not None
                 else None)
        self._connected_at = None
        if reason_code.value == SHARED_NOT_SUPPORTED:
            self._lacks_shared("it disconnected the hub with reason 0x9E")
            self._lost.set()
            return
        explicit = reason_code.value == SESSION_TAKEN_OVER
        short = lived is not None and lived < _FLAP_S
        self._flaps = self._flaps + 1 if short or explicit else 0
        self._backoff = short or explicit
        if explicit or self._flaps == _FLAPS:
            self._report_takeover(explicit)
        else:
            log.warning("hub lost the broker; reconnecting", extra={"reason": str(reason_code)})
        self._lost.set()

    def _lacks_shared(self, how: str) -> None:
        """A broker without shared subscriptions: said once, as an error; the hub stays
        connected without ingesting (not ready) instead of reconnecting in a loop."""
        if self.config.share_group is None or self.no_shared:
            return
        self.no_shared = True
        log.error("the broker lacks shared subscriptions (%s): the hub cannot ingest with "
                  "share group %r; for one hub process, set mqtt.share_group: null in "
                  "hub.yaml (a plain subscription)", how, self.config.share_group,
                  extra={"host": self.config.host, "port": self.config.port})

    def _report_takeover(self, explicit: bool) -> None:
        self.takeovers += 1
        how = ("the broker says the session was taken over" if explicit else
               f"the broker closed the connection {self._flaps} times within {_FLAP_S:.0f} s "
               "of accepting it")
        # ERROR once per process; a fight over one client id goes on repeating.
        log.log(logging.ERROR if self.takeovers == 1 else logging.WARNING,
                "hub session taken over: %s; another client %s client id %r (another hub "
                "process with the same mqtt.client_id, or someone with the hub's "
                "credentials); reconnecting with growing waits", how,
                "is using" if explicit else "is probably using", self.config.client_id,
                extra={"client_id": self.config.client_id, "takeovers": self.takeovers})

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            self._log_status(msg)
            self.connection.ack(msg.mid, msg.qos)
            return
        if not self.ingest:
            # Sent before the unsubscribe took effect: never acknowledged, so the edge sends
            # it again (to a process that ingests).
            return
        inbox = self.inbox
        inbox.put_nowait(Inbound(msg.topic, bytes(msg.payload), time.time(), msg.mid, msg.qos))
        if inbox.qsize() >= self.config.ingest_queue and not self.connection.paused:
            self.connection.pause_reading()

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

    # -- for the hub's tasks --------------------------------------------------------------

    def taken(self) -> None:
        """The consumer took one message off `inbox` (reading resumes at half full)."""
        if self.connection.paused and self.inbox.qsize() <= self.config.ingest_queue // 2:
            self.connection.resume_reading()

    def ack(self, messages: Iterable[Inbound]) -> None:
        """PUBACK ingested messages (after their commit), in the order they were received."""
        connection = self.connection
        for message in messages:
            if message.qos > 0:
                connection.ack(message.mid, message.qos)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        properties: Properties | None = None,
    ) -> asyncio.Future[None]:
        """Publish QoS 1; the future completes on PUBACK (or fails on a refusing reason code)."""
        return self.connection.publish_future(topic, payload, retain=retain,
                                              properties=properties)

    def publish_nowait(
        self, topic: str, payload: bytes, *, retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish QoS 1 without waiting for the PUBACK (acks: the edge resends if lost)."""
        with contextlib.suppress(PublishError):
            self.connection.publish(topic, payload, retain=retain, properties=properties)

    def forget(self, futures: list[asyncio.Future[None]]) -> None:
        """Stop tracking futures that a caller gave up on (their ids may be reused later)."""
        self.connection.forget(futures)
