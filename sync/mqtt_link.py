"""One MQTT 5 connection of the uplink: a paho-mqtt 2.x client, TLS, and a thin bridge to asyncio.

paho runs on the event loop, not on a network thread of its own (aiomqtt's way): the socket is
registered with `add_reader`, `publish` writes straight to it, a writer is registered only while
the kernel's buffer is full, and a 1 s timer does paho's keepalive. Measured at 200 packets/s,
every thread wake-up costs ~90 us of CPU on these VMs; with a network thread each packet woke it
to write, again for the PUBACK and again for the hub's ack, and each ack then crossed back to the
loop. Now a packet costs the loop two socket events and no hand-off. Only `connect` (a blocking
TCP and TLS handshake) runs in a worker thread, before the socket is attached to the loop.

The uplink does not take a PUBACK as safety (only the hub's ack deletes rows), so it does not
keep a future per message: PUBACKs are counted, and the loop is woken only while it waits for
room in the in-flight window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.mqtt_tls import Tls

__all__ = ["ConnectRefused", "Link", "LinkLost", "Tls", "UplinkError", "publish_props"]

log = logging.getLogger("sync.uplink")

# paho's timers (keepalive PINGREQ, the PINGRESP deadline) run from `loop_misc`, as often as
# paho's own network loop calls it.
_MISC_INTERVAL_S = 1.0


class UplinkError(Exception):
    """Base of the uplink's errors."""


class ConnectRefused(UplinkError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"broker refused the connection: {reason} ({reason.value})")
        self.reason = reason


class LinkLost(UplinkError):
    """The connection ended while something was waiting on it."""


def publish_props(content_type: str, user: list[tuple[str, str]] | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = content_type
    props.PayloadFormatIndicator = 1
    if user:
        props.UserProperty = user
    return props


class Link:
    """One MQTT connection: its paho client, PUBACK accounting and the loss event.

    Create it on the event loop's thread, `connect` the client (off the loop), then `attach()`:
    from then on paho's reads, writes and callbacks (`_on_*`) run on the loop. `close()` detaches
    and closes the socket if paho has not.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: mqtt.Client,
        session: str,
        on_ack: Callable[[str, str], None],
        on_lost: Callable[[], None],
        ack_topic: str,
    ) -> None:
        self.loop = loop
        self.client = client
        self.session = session
        self.connack: asyncio.Future[ReasonCode] = loop.create_future()
        self.lost = asyncio.Event()
        self.room = asyncio.Event()
        self.published = 0  # QoS 1 messages handed to paho (loop thread writes)
        self.pubacked = 0  # PUBACKs seen (paho thread writes)
        self.refused = 0
        self._room_below: int | None = None  # the loop waits until outstanding < this
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._ack_topic = ack_topic
        self._loop_thread = threading.get_ident()
        self._fd: int | None = None  # the socket registered with the loop
        self._writing = False  # a writer is registered (the socket's buffer was full)
        self._misc: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close

    @property
    def outstanding(self) -> int:
        """Messages published on this connection and not yet PUBACKed."""
        return self.published - self.pubacked

    # --- socket on the event loop --------------------------------------------------------

    def attach(self) -> None:
        """Serve the connected client's socket from the loop (call on the loop, after
        `client.connect`); raises `LinkLost` if the socket is already gone."""
        sock = self.client.socket()
        if sock is None:
            raise LinkLost("connection closed before it was attached")
        self._fd = sock.fileno()
        self.loop.add_reader(self._fd, self._readable)
        self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)
        self._sync_writer()  # CONNECT may not have gone out whole

    def close(self) -> None:
        """Stop serving the socket and close it unless paho already has (call on the loop)."""
        if not self.connack.done():
            self.connack.cancel()  # nobody waits for it any more
        elif not self.connack.cancelled():
            self.connack.exception()  # a loss before CONNACK was reported by whoever raised
        sock = self.client.socket()
        self._detach()
        if sock is not None:
            # Without DISCONNECT: the broker treats it as a loss (sends our will).
            sock.close()

    def _detach(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            if self._writing:
                self.loop.remove_writer(self._fd)
            self._fd = None
        self._writing = False

    def _readable(self) -> None:
        client = self.client
        while True:
            client.loop_read()  # a lost connection ends in `_on_socket_close` and on_disconnect
            # TLS: records already decrypted sit in the SSL object, invisible to the selector.
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
        self._sync_writer()  # PUBACKs for the hub's acks, publishes paho released

    def _writable(self) -> None:
        self.client.loop_write()
        self._sync_writer()

    def _sync_writer(self) -> None:
        """Watch for writability exactly while paho holds unsent bytes (`publish` writes
        directly; only a full socket buffer leaves some behind)."""
        wanted = self._fd is not None and self.client.want_write()
        if wanted and not self._writing:
            assert self._fd is not None
            self.loop.add_writer(self._fd, self._writable)
            self._writing = True
        elif not wanted and self._writing:
            if self._fd is not None:
                self.loop.remove_writer(self._fd)
            self._writing = False

    def _tick(self) -> None:
        self._misc = None
        if self._fd is None:
            return
        self.client.loop_misc()  # may close the socket (no PINGRESP): `_on_socket_close`
        self._sync_writer()
        if self._fd is not None:
            self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)

    # --- paho callbacks: on the loop once attached (`connect` runs in a worker thread) -----

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            func(*args)
            return
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    def _on_socket_close(self, _c: Any, _u: Any, _sock: Any) -> None:
        # paho calls this before it closes the socket: unregister while the fd is still ours.
        if threading.get_ident() == self._loop_thread:
            self._detach()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self._call(self._connected, reason)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        self._call(self._disconnected, reason)

    def _on_publish(self, _c: Any, _u: Any, _mid: int, reason: ReasonCode, _p: Any) -> None:
        self.pubacked += 1
        if reason.is_failure:
            # Not fatal: the row stays until the hub acks it and the ack timeout resends it.
            self.refused += 1
            log.warning("uplink: broker refused a publish", extra={"reason": str(reason)})
        below = self._room_below
        if below is not None and self.published - self.pubacked < below:
            self._room_below = None
            self.room.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
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
        self._call(self._on_ack, epoch, text)

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

    # --- event loop ----------------------------------------------------------------------

    def _connected(self, reason: ReasonCode) -> None:
        if not self.connack.done():
            self.connack.set_result(reason)

    def _disconnected(self, reason: ReasonCode) -> None:
        self.lost.set()
        self.room.set()
        if not self.connack.done():
            self.connack.set_exception(LinkLost(f"connection closed before CONNACK: {reason}"))
        self._on_lost()

    def publish(self, topic: str, payload: bytes, props: Properties, *,
                retain: bool = False) -> None:
        """QoS 1 publish, written to the socket at once; raises `LinkLost` when paho cannot
        take it."""
        self.published += 1
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.published -= 1
            raise LinkLost(f"publish refused by the client: {mqtt.error_string(info.rc)}")
        self._sync_writer()

    def subscribe(self, topic: str) -> None:
        """QoS 1 subscription (the SUBACK is logged only when it refuses)."""
        self.client.subscribe(topic, qos=1)
        self._sync_writer()

    def disconnect(self) -> None:
        """Send DISCONNECT (no will) and let paho close the socket."""
        self.client.disconnect()
        self._sync_writer()

    async def wait_room(self, limit: int) -> None:
        """Wait until fewer than `limit` messages await their PUBACK (or the link is lost)."""
        while self.outstanding >= limit and not self.lost.is_set():
            self.room.clear()
            self._room_below = limit
            if self.outstanding < limit:  # a PUBACK slipped in before the flag was set
                self._room_below = None
                return
            await self.room.wait()

    async def wait_all_acked(self, timeout: float) -> bool:
        """Wait until every publish on this link has its PUBACK; False on timeout or loss."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.outstanding > 0 and not self.lost.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.room.clear()
            self._room_below = 1
            if self.outstanding == 0:
                break
            try:
                await asyncio.wait_for(self.room.wait(), remaining)
            except TimeoutError:
                return False
        return self.outstanding == 0
