"""A broker without shared subscriptions: the hub says so once, as an error, and does not
reconnect in a loop; `mqtt.share_group: null` ingests with a plain subscription.

Mosquitto always offers shared subscriptions, so the refusing broker is a tiny MQTT 5 peer on
loopback speaking raw bytes: a real CONNACK (with Shared Subscription Available = 0) or a
real SUBACK (reason 0x9E) that the hub's paho client parses."""

from __future__ import annotations

import asyncio
import logging
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devstack.mosquitto import PrivateBroker
from hub.config import MqttSection
from hub.mqtt import HubMqtt
from sync import topics

CONNACK_NO_SHARED = bytes([0x20, 5, 0, 0, 2, 0x2A, 0])  # property 0x2A = 0
CONNACK_PLAIN = bytes([0x20, 3, 0, 0, 0])


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: its type and its body."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


def _suback(body: bytes) -> bytes:
    """SUBACK for a SUBSCRIBE body: 0x9E for a $share filter, granted QoS 1 otherwise."""
    packet_id, i = body[:2], 2
    props, i = body[i], i + 1 + body[i]  # the hub sends no long property block
    assert props < 0x80
    codes = []
    while i < len(body):
        size = int.from_bytes(body[i:i + 2], "big")
        codes.append(0x9E if body[i + 2:i + 2 + size].startswith(b"$share/") else 1)
        i += 2 + size + 1
    rest = packet_id + b"\0" + bytes(codes)
    return bytes([0x90, len(rest)]) + rest


class RefusingBroker:
    """Answers CONNECT with `connack`, SUBSCRIBE with `_suback`; counts the CONNECTs."""

    def __init__(self, connack: bytes, *, disconnect: bool = False) -> None:
        self.connack = connack
        self.disconnect = disconnect  # answer a $share SUBSCRIBE with DISCONNECT 0x9E
        self.connects = 0
        self.subscribed: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                kind, body = await _packet(reader)
                if kind == 1:  # CONNECT
                    self.connects += 1
                    writer.write(self.connack)
                elif kind == 8:  # SUBSCRIBE
                    self.subscribed.append(body)
                    if self.disconnect and b"$share/" in body:
                        writer.write(bytes([0xE0, 2, 0x9E, 0]))
                        await writer.drain()
                        break
                    writer.write(_suback(body))
                elif kind == 3 and body:  # PUBLISH (QoS 1: PUBACK its packet id)
                    size = int.from_bytes(body[:2], "big")
                    writer.write(bytes([0x40, 2]) + body[2 + size:4 + size])
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize(("connack", "disconnect", "how"), [
    (CONNACK_NO_SHARED, False, "its CONNACK says Shared Subscription Available = 0"),
    (CONNACK_PLAIN, False, "it refused the subscription with reason 0x9E"),
    (CONNACK_PLAIN, True, "it disconnected the hub with reason 0x9E"),
])
def test_a_broker_without_shared_subscriptions_is_told_once_as_an_error(
    connack: bytes, disconnect: bool, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> RefusingBroker:
        peer = RefusingBroker(connack, disconnect=disconnect)
        port = await peer.start()
        config = MqttSection(host="127.0.0.1", port=port, client_id="hub-noshare",
                             share_group="keyop-hub")
        hub = HubMqtt(config, "hub", asyncio.get_running_loop())
        hub.start()
        try:
            deadline = time.monotonic() + 10
            while not hub.no_shared:
                assert time.monotonic() < deadline, "the hub did not notice"
                await asyncio.sleep(0.01)
            # The old behaviour reconnected once a second: watch for three of those.
            await asyncio.sleep(3.0)
        finally:
            await hub.close(grace_s=1.0)
            await peer.close()
        assert not hub.subscribed.is_set(), "not ready: nothing is ingested"
        return peer

    with caplog.at_level(logging.WARNING, logger="hub.mqtt"):
        peer = asyncio.run(scenario())
    # One connection; after a DISCONNECT 0x9E one more, which no longer tries $share.
    assert peer.connects == 1 + disconnect, "no reconnect loop"
    assert sum(b"$share/" in body for body in peer.subscribed) == (connack != CONNACK_NO_SHARED)
    told = [r for r in caplog.records if r.name == "hub.mqtt"]
    assert [(r.levelno, r.getMessage()) for r in told] == [(
        logging.ERROR,
        f"the broker lacks shared subscriptions ({how}): the hub cannot ingest with share "
        "group 'keyop-hub'; for one hub process, set mqtt.share_group: null in hub.yaml "
        "(a plain subscription)")]


def test_share_group_null_ingests_with_a_plain_subscription(broker: PrivateBroker) -> None:
    config = MqttSection(host="127.0.0.1", port=broker.port, client_id="hub-plain",
                         share_group=None)

    async def scenario() -> bytes:
        hub = HubMqtt(config, "hub", asyncio.get_running_loop())
        hub.start()
        try:
            deadline = time.monotonic() + 10
            while not hub.subscribed.is_set():
                assert time.monotonic() < deadline, "no ingest subscription"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(_publish, broker.port)
            item = await asyncio.wait_for(hub.inbox.get(), 10)
            hub.taken()
            hub.ack([item])
            assert item.topic == topics.up_events("gw-plain")
            return item.payload
        finally:
            await hub.close(grace_s=1.0)

    assert asyncio.run(scenario()) == b"one"
    assert topics.hub_ingest_subscription(None) == "keyop/v1/up/+/events"


def _publish(port: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-plain",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topics.up_events("gw-plain"), b"one", qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
