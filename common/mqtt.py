"""One MQTT 5 client served by the asyncio event loop: the adapter of the edge uplink and the hub.

paho-mqtt runs without its network thread (aiomqtt's way): `loop_start()` is never called. The
TCP connect and the TLS handshake block, so they run in a worker thread (`common.mqtt_tls`);
the connected socket is handed to paho, and from then on the loop serves it: `add_reader` runs
paho's reads, what paho writes in one turn of the loop goes out in one `send` at its end
(`common.paho_fast`), a writer is registered only while the kernel's buffer is full, and a 1 s
timer runs paho's keepalive. Every paho callback therefore runs on the loop thread and nothing
crosses threads per message: with a network thread each message and PUBACK was handed across
with `call_soon_threadsafe` (~90 us of CPU per wake-up on these VMs), each side waiting for the
other's turn with the GIL.

What the adapter does for its owner:
- QoS 1 publishes, each with a future settled by its PUBACK's reason code (`publish_future`) or
  only counted (`publish`: `outstanding`, `wait_room`, `wait_all_acked`);
- the in-flight window: `window` until the CONNACK, then the broker's Receive Maximum, at most
  `inflight_max` (paho itself ignores it, and a broker disconnects a client that exceeds it);
- manual acknowledgement of received messages (`manual_ack=True`, `ack`);
- backpressure: `pause_reading` stops reading the socket (the broker holds the rest, pushed
  back over TCP) until `resume_reading`;
- TCP_NODELAY: neither paho nor Mosquitto disables Nagle, and with it each small publish waits
  up to ~40 ms for the previous one's ACK (FIELD-NOTES: p50 6.7 ms -> 0.25 ms).

Reconnecting is the owner's visible loop (with `common.backoff`): `open()` again after `lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.mqtt_tls import Tls, open_socket
from common.paho_fast import FastClient

# paho's timers (keepalive PINGREQ, the PINGRESP deadline) run from `loop_misc`, as often as
# paho's own network loop calls it.
_MISC_INTERVAL_S = 1.0
# Mosquitto's default Receive Maximum (its max_inflight_messages): the window until a CONNACK
# says what this broker allows.
DEFAULT_WINDOW = 20
_NO_LIMIT = 65_535


class MqttError(Exception):
    """Base of the adapter's errors."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"broker refused the connection: {reason} ({reason.value})")
        self.reason = reason


class ConnectionLost(MqttError):
    """The connection ended while something was waiting on it, or before it was established."""


class PublishError(MqttError):
    """The broker refused a publish, or paho could not queue it."""


ConnectHook = Callable[[ReasonCode, mqtt.ConnectFlags, Properties | None], None]


class MqttClient:
    """One MQTT 5 client on the event loop. Create and use it on the loop's thread.

    `configure` once, then `open()` for each connection (the owner retries after `lost`);
    `close_socket()` ends a connection without DISCONNECT (the broker sends the will). The
    hooks (`on_connect`, `on_disconnect`, `on_message`, `on_subscribe`, `on_refused`,
    `on_lost`) are called on the loop.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_id: str,
        *,
        inflight_max: int,
        window: int = DEFAULT_WINDOW,
        manual_ack: bool = False,
        queue_offline: bool = True,
        username: str | None = None,
        password: str | None = None,
        tls: Tls | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """`queue_offline`: a publish while disconnected waits in paho for the next connection
        (a client kept across reconnects); False: it raises `ConnectionLost`."""
        self.loop = loop
        self.inflight_max = inflight_max
        self.queue_offline = queue_offline
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self.on_connect: ConnectHook | None = None
        self.on_disconnect: Callable[[ReasonCode], None] | None = None
        self.on_message: Callable[[mqtt.MQTTMessage], None] | None = None
        self.on_subscribe: Callable[[list[ReasonCode]], None] | None = None
        self.on_refused: Callable[[ReasonCode], None] | None = None
        """A PUBACK with a failure reason code, for a publish without a future."""
        self.on_lost: Callable[[], None] | None = None
        """The connection ended (once per connection, before `lost` is set)."""
        self.lost = asyncio.Event()
        self.connack: asyncio.Future[ReasonCode | None] = loop.create_future()
        """This connection's CONNACK reason code; None when it ended before one."""
        self.published = 0  # QoS 1 messages handed to paho
        self.pubacked = 0  # PUBACKs seen
        self.refused = 0  # PUBACKs with a failure reason code
        self._room = asyncio.Event()
        self._room_below: int | None = None  # a waiter wants outstanding < this
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._host = ""
        self._port = 0
        self._fd: int | None = None  # the socket registered with the loop
        self._writing = False  # a writer is registered (the socket's buffer was full)
        self._flush_soon = False  # a flush is scheduled for the end of this turn of the loop
        self._paused = False  # the socket is not read (the owner's queue is full)
        self._misc: asyncio.TimerHandle | None = None

        client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                            protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        if username is not None:
            client.username_pw_set(username, password)
        client.max_inflight_messages_set(window)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = _no_delay
        client.on_socket_close = self._on_socket_close
        self.client = client

    # -- connection -----------------------------------------------------------------------

    def configure(self, host: str, port: int, keepalive_s: int, *, clean_start: bool,
                  properties: Properties | None = None) -> None:
        """Where and how every `open()` connects (paho records it; nothing is sent)."""
        self._host, self._port = host, port
        self.client.connect_async(host, port, keepalive=keepalive_s, clean_start=clean_start,
                                  properties=properties)

    async def open(self, *, unless: asyncio.Event | None = None) -> bool:
        """Connect (TCP and TLS in a worker thread) and send CONNECT; `connack` then tells the
        answer. Raises `OSError` when the broker cannot be reached (or its certificate is
        refused) and `ConnectionLost` when the connection broke while CONNECT was sent; False
        (nothing sent) when `unless` was set meanwhile."""
        sock = await asyncio.to_thread(open_socket, self._host, self._port,
                                       self.connect_timeout_s, self.tls)
        if unless is not None and unless.is_set():
            sock.close()
            return False
        self.lost.clear()
        if not self.connack.done():
            self.connack.cancel()
        self.connack = self.loop.create_future()
        self.client.use_socket(sock)
        try:
            self.client.reconnect()  # non-blocking now: writes CONNECT
        except OSError as error:
            self.close_socket()
            raise ConnectionLost(f"connection lost while connecting: {error}") from error
        self._attach()
        return True

    def is_connected(self) -> bool:
        return self.client.is_connected()

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker discards the will); paho closes the socket after it."""
        self.client.disconnect()
        self._flush()

    def close_socket(self) -> None:
        """Stop serving the socket and close it unless paho already has; without DISCONNECT
        the broker treats it as a loss (it sends the will)."""
        sock = self.client.socket()
        self._detach()
        if sock is not None:
            sock.close()

    # -- publishing and acknowledging -----------------------------------------------------

    @property
    def outstanding(self) -> int:
        """QoS 1 messages handed to paho and not yet PUBACKed."""
        return self.published - self.pubacked

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                properties: Properties | None = None) -> int:
        """QoS 1 publish, sent at the end of this turn of the loop; its message id. Raises
        `PublishError` when paho refuses it and `ConnectionLost` when disconnected (unless
        `queue_offline`: then it goes out after the next CONNACK)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        rc = info.rc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise PublishError(f"{topic}: paho refused ({mqtt.error_string(rc)})")
            if not self.queue_offline:
                raise ConnectionLost(f"{topic}: not connected")
        self.published += 1
        self._schedule_flush()
        return info.mid

    def publish_future(self, topic: str, payload: bytes, *, retain: bool = False,
                       properties: Properties | None = None) -> asyncio.Future[None]:
        """`publish` with a future that completes on its PUBACK and fails with `PublishError`
        on a refusing reason code (or when paho refused it)."""
        future: asyncio.Future[None] = self.loop.create_future()
        try:
            mid = self.publish(topic, payload, retain=retain, properties=properties)
        except MqttError as error:
            future.set_exception(error)
            return future
        self._pending[mid] = future
        return future

    def forget(self, futures: list[asyncio.Future[None]]) -> None:
        """Stop tracking futures that a caller gave up on (their ids may be reused later)."""
        dropped = {id(f) for f in futures if not f.done()}
        if not dropped:
            return
        for mid in [m for m, f in self._pending.items() if id(f) in dropped]:
            del self._pending[mid]
        for future in futures:
            if not future.done():
                future.cancel()

    def ack(self, mid: int, qos: int) -> None:
        """PUBACK a received message (`manual_ack`); sent at the end of this turn."""
        self.client.ack(mid, qos)
        self._schedule_flush()

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.client.subscribe(topics)
        self._schedule_flush()

    def unsubscribe(self, topics: list[str]) -> None:
        self.client.unsubscribe(topics)
        self._schedule_flush()

    async def wait_room(self, limit: int) -> None:
        """Wait until fewer than `limit` messages await their PUBACK (or the link is lost)."""
        while self.outstanding >= limit and not self.lost.is_set():
            self._room.clear()
            self._room_below = limit
            await self._room.wait()

    async def wait_all_acked(self, timeout: float) -> bool:
        """Wait until every publish has its PUBACK; False on timeout or loss."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_room(1), timeout)
        return self.outstanding == 0

    # -- backpressure ---------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        """Stop reading the socket: the broker holds what follows (TCP backpressure)."""
        self._paused = True
        if self._fd is not None:
            self.loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        self._paused = False
        if self._fd is not None:
            self.loop.add_reader(self._fd, self._readable)
            if self.client.buffered():
                self.loop.call_soon(self._readable)

    # -- the socket on the event loop -----------------------------------------------------

    def _attach(self) -> None:
        sock = self.client.socket()
        if sock is None:
            self._lose()
            return
        self._fd = sock.fileno()
        if not self._paused:
            self.loop.add_reader(self._fd, self._readable)
        self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)
        self._flush()  # CONNECT

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
            client.loop_read()  # a lost connection ends in `_on_socket_close`, on_disconnect
            # Bytes already read into paho's buffer (or the SSL object's) are invisible to
            # the selector.
            if self._paused or self._fd is None or not client.buffered():
                break
        self._flush()  # PUBACKs, and publishes that PUBACKs released from paho's window

    def _schedule_flush(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what paho has written; watch for writability exactly while some is left
        (the kernel's buffer was full)."""
        self._flush_soon = False
        if self._fd is None:
            return
        self.client.flush()  # a lost connection ends in `_on_socket_close`
        wanted = self._fd is not None and self.client.want_write()
        if wanted and not self._writing:
            assert self._fd is not None
            self.loop.add_writer(self._fd, self._flush)
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
        self._flush()
        if self._fd is not None:
            self._misc = self.loop.call_later(_MISC_INTERVAL_S, self._tick)

    def _lose(self) -> None:
        if self.lost.is_set():
            return
        if not self.connack.done():
            self.connack.set_result(None)
        self._room.set()
        if self.on_lost is not None:
            self.on_lost()
        self.lost.set()

    # -- paho callbacks (on the loop) -----------------------------------------------------

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if not reason.is_failure:
            # paho resends what is in flight after this callback returns, under the new window.
            allowed = getattr(properties, "ReceiveMaximum", _NO_LIMIT) if properties else _NO_LIMIT
            self.client.set_window(max(1, min(self.inflight_max, allowed)))
        if not self.connack.done():
            self.connack.set_result(reason)
        if self.on_connect is not None:
            self.on_connect(reason, flags, properties)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect(reason)
        self._lose()

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        # paho calls this before it closes the socket: unregister while the fd is still ours.
        self._detach()
        self._lose()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int,
                    reason: ReasonCode, _properties: Properties | None) -> None:
        self.pubacked += 1
        future = self._pending.pop(mid, None)
        if reason.is_failure:
            self.refused += 1
            if future is not None:
                if not future.done():
                    future.set_exception(PublishError(f"broker refused the publish: {reason}"))
            elif self.on_refused is not None:
                self.on_refused(reason)
        elif future is not None and not future.done():
            future.set_result(None)
        below = self._room_below
        if below is not None and self.published - self.pubacked < below:
            self._room_below = None
            self._room.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reasons: list[ReasonCode], _properties: Properties | None) -> None:
        if self.on_subscribe is not None:
            self.on_subscribe(reasons)


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
