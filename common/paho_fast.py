"""The one module that relies on paho-mqtt's private members: its `Client` with the hot spots
made cheap (paho-mqtt 2.2.0 internals, pinned in pyproject.toml).

Measured in `keyop bench hub` (GIL samples, PostgreSQL, 50 suppliers, ~1 fan-out message per
packet):

- PUBACKs: paho decodes each into a new `ReasonCode` (which copies its table of ~45 names) and a
  new `Properties`: 12.5 % of the hub's time. A PUBACK without properties (Mosquitto's answer:
  Success, or "No matching subscribers" when no supplier is listening) now settles with shared,
  never-mutated objects, one per reason code; any other goes through paho's own decoder.
- Reads: paho asks the socket for one field at a time (3 `recv` calls for a 4-byte PUBACK).
  The socket is now read in 64 KiB chunks that paho's small reads are served from. Bytes left
  in that buffer are invisible to a selector: whoever serves the socket reads again while
  `buffered()` is non-zero.
- Writes: paho sends each packet with its own `send` call (~7 us of CPU each here); they are
  gathered in a buffer instead and put on the wire by `flush`, once per turn of the owner's
  loop. The owner calls `flush` after anything that may have written, and watches for
  writability while `want_write()`.
- The in-flight window: on every PUBACK paho walks its whole list of unacknowledged messages
  to find the first one still queued behind the window (~20 steps at the window of 20: 7 % of
  the hub's time). The queued ones are kept in a FIFO of their own instead. paho ignores the
  broker's Receive Maximum and its setter refuses a connected client: `set_window` sets it.
- Connecting: `socket.create_connection` blocks, so it runs in a worker thread and the
  connected socket is handed in with `use_socket`; paho's `reconnect()` then runs on the owner's
  thread, which never races a publish against the CONNECT.

No other module of the project touches paho's private members (`PAHO_PRIVATE` lists the ones
used here). tests/common/test_paho_fast.py fails first on a paho upgrade: it checks the version
these overrides were checked against, that the members still exist, that the overrides agree with
paho's own paths, and that no other module uses them.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import deque
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MessageState, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PAHO_CHECKED = "2.2.0"
"""The paho-mqtt version these overrides were written and checked against."""
PAHO_PRIVATE = (
    "_create_socket_connection", "_do_on_publish", "_handle_pubackcomp", "_in_packet",
    "_inflight_messages", "_loop_rc_handle", "_max_inflight_messages",
    "_messages_reconnect_reset_out", "_out_message_mutex", "_out_messages", "_send_publish",
    "_sock", "_sock_close", "_sock_recv", "_sock_send", "_update_inflight",
)
"""The private members of `paho.mqtt.client.Client` that `FastClient` reads or overrides."""

_CHUNK = 65_536
NO_PROPERTIES = Properties(PacketTypes.PUBACK)
_REASONS: dict[int, ReasonCode] = {}  # shared PUBACK reason codes, by value


class FastClient(mqtt.Client):
    """A paho client served by its owner's event loop (never `loop_start`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_pos = 0
        self._write_buffer = bytearray()
        # Message ids queued behind the in-flight window, oldest first (may hold ids that were
        # sent or settled since: they are skipped).
        self._queued: deque[int] = deque()
        self._next_socket: socket.socket | None = None

    def use_socket(self, sock: socket.socket) -> None:
        """The TCP connection the next `reconnect()` speaks MQTT on (connected by the caller)."""
        self._next_socket = sock

    @property
    def window(self) -> int:
        """Most QoS 1 and 2 messages in flight at once (the rest wait in the FIFO)."""
        return int(self._max_inflight_messages)

    def set_window(self, size: int) -> None:
        """Set the in-flight window, also while connected (paho's setter refuses that); what
        is queued goes out under it when paho next updates its window (after a CONNACK or a
        PUBACK)."""
        self._max_inflight_messages = size

    def queued(self) -> int:
        """Message ids in the FIFO behind the in-flight window (some may be settled)."""
        return len(self._queued)

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not consumed yet (with TLS, also records
        already decrypted in the SSL object)."""
        pending = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return len(self._read_buffer) - self._read_pos + pending

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        info = super().publish(topic, payload, qos, retain, properties)
        message = self._out_messages.get(info.mid)
        if message is not None and message.state == MessageState.MQTT_MS_QUEUED:
            self._queued.append(info.mid)
        return info

    def _messages_reconnect_reset_out(self) -> None:
        super()._messages_reconnect_reset_out()
        self._queued = deque(mid for mid, message in self._out_messages.items()
                             if message.state == MessageState.MQTT_MS_QUEUED)

    def _update_inflight(self) -> MQTTErrorCode:
        # paho's own, with the queued messages taken from the FIFO instead of a walk.
        out, queued = self._out_messages, self._queued
        while queued and self._inflight_messages < self._max_inflight_messages:
            message = out.get(queued.popleft())
            if message is None or message.state != MessageState.MQTT_MS_QUEUED:
                continue
            self._inflight_messages += 1
            message.state = (MessageState.MQTT_MS_WAIT_FOR_PUBACK if message.qos == 1
                             else MessageState.MQTT_MS_WAIT_FOR_PUBREC)
            rc = self._send_publish(message.mid, message.topic.encode("utf-8"), message.payload,
                                    message.qos, message.retain, message.dup,
                                    properties=message.properties)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def want_write(self) -> bool:
        return bool(self._write_buffer) or super().want_write()

    def flush(self) -> None:
        """Send what paho has written, as far as the socket takes it without blocking."""
        self.loop_write()  # packets paho queued from inside its own callbacks
        buffer = self._write_buffer
        if not buffer or self._sock is None:
            return
        try:
            sent = self._sock.send(buffer)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            # Retried with the same bytes first (and maybe more after them), as TLS requires.
            return
        except OSError:
            # The connection is gone: paho closes the socket and reports the loss.
            self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        del buffer[:sent]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")
        self._write_buffer += buf
        return len(buf)

    def _create_socket_connection(self) -> socket.socket:
        sock, self._next_socket = self._next_socket, None
        if sock is None:
            raise ConnectionError("no connected socket was handed in (use_socket)")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        buffer, pos = self._read_buffer, self._read_pos
        if pos >= len(buffer):
            buffer = super()._sock_recv(_CHUNK)  # BlockingIOError when empty, b"" at EOF
            if not buffer:
                return buffer
            self._read_buffer, pos = buffer, 0
        chunk = buffer[pos:pos + bufsize]
        self._read_pos = pos + len(chunk)
        return chunk

    def _sock_close(self) -> None:
        # paho closes right after writing a DISCONNECT: what is written goes out first, as far
        # as the socket takes it. Whatever was read belongs to the connection that ends here.
        if self._sock is not None and self._write_buffer:
            with contextlib.suppress(OSError):
                self._sock.send(self._write_buffer)
        self._write_buffer.clear()
        self._read_buffer, self._read_pos = b"", 0
        super()._sock_close()

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        reason = plain_puback_reason(packet) if cmd == "PUBACK" else None
        if reason is None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def plain_puback_reason(packet: bytes | bytearray) -> ReasonCode | None:
    """The shared reason code of a PUBACK body (after the fixed header) that carries no
    properties; None for anything else (properties, a malformed body, an unknown code)."""
    size = len(packet)
    if size == 2:
        code = 0  # MQTT 5: the reason code may be left out when it is Success
    elif size == 3 or (size == 4 and packet[3] == 0):
        code = packet[2]
    else:
        return None
    reason = _REASONS.get(code)
    if reason is None:
        try:
            reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
        except (KeyError, ValueError):
            return None
        _REASONS[code] = reason
    return reason
