"""The hub's paho client: its overrides of paho internals agree with paho's own paths, and the
hub's connection pushes back on the broker when ingest falls behind, then catches up."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from devstack.mosquitto import PrivateBroker
from hub.config import MqttSection
from hub.mqtt import HubMqtt
from hub.mqtt_client import FastClient, plain_puback_reason
from sync import topics

PUBACK_CODES = [0, 16, 128, 131, 135, 144, 145, 151, 153]


def test_paho_still_has_the_internals_the_fast_client_overrides() -> None:
    for name in ("_sock_recv", "_sock_close", "_create_socket_connection",
                 "_handle_pubackcomp", "_do_on_publish", "_in_packet", "_out_messages"):
        assert hasattr(mqtt.Client(CallbackAPIVersion.VERSION2), name), name


@pytest.mark.parametrize("code", PUBACK_CODES)
@pytest.mark.parametrize("tail", [b"", b"\x00"])
def test_plain_pubacks_decode_as_paho_decodes_them(code: int, tail: bytes) -> None:
    body = b"\x12\x34" + bytes([code]) + tail
    ours = plain_puback_reason(body)
    paho = _packet.decode_puback(0x40, bytearray(body), MQTTProtocolVersion.MQTTv5).reason
    assert ours is not None
    assert (ours.value, ours.getName(), ours.is_failure) == (
        paho.value, paho.getName(), paho.is_failure)


def test_a_puback_with_only_its_message_id_is_success() -> None:
    reason = plain_puback_reason(b"\x00\x07")
    assert reason is not None and reason == ReasonCode(PacketTypes.PUBACK, identifier=0)
    assert not reason.is_failure


@pytest.mark.parametrize("body", [
    b"\x00",  # too short: paho reports it malformed
    b"\x00\x01\x10\x03\x1f\x00\x00",  # a reason string property
    b"\x00\x01\x05",  # not a PUBACK reason code
])
def test_other_pubacks_are_left_to_paho(body: bytes) -> None:
    assert plain_puback_reason(body) is None


def test_reads_are_served_from_one_buffer_and_cleared_with_the_socket() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    theirs.sendall(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02")
    assert client._sock_recv(1) == b"\x40"
    assert client.buffered() == 7
    assert client._sock_recv(1) == b"\x02"
    assert client._sock_recv(10) == b"\x00\x01\x40\x02\x00\x02"  # no more than what is there
    assert client.buffered() == 0
    with pytest.raises(BlockingIOError):
        client._sock_recv(1)
    theirs.sendall(b"\x40\x02")
    assert client._sock_recv(1) == b"\x40"
    client._sock_close()
    assert client.buffered() == 0 and client.socket() is None
    theirs.close()


def test_ingest_backpressure_pauses_reading_then_everything_arrives(broker: PrivateBroker
                                                                    ) -> None:
    """With ingest stalled, the hub stops reading at its queue bound (the broker keeps the
    rest); once ingest takes messages, reading resumes and all of them arrive, once."""
    total, bound = 300, 20
    config = MqttSection(host="127.0.0.1", port=broker.port, client_id="hub-backpressure",
                         ingest_queue=bound)

    async def scenario() -> tuple[int, list[bytes]]:
        hub = HubMqtt(config, "hub-bp", asyncio.get_running_loop())
        hub.start()
        try:
            await _until(hub.subscribed.is_set, "the ingest subscription")
            await asyncio.to_thread(_publish_edge_messages, broker.port, total)
            # Nothing is taken: the queue fills up to about its bound and stays there.
            await _until(lambda: hub.inbox.qsize() >= bound, "the queue to fill")
            await asyncio.sleep(0.3)
            peak = hub.inbox.qsize()
            received: list[bytes] = []
            while len(received) < total:
                item = await asyncio.wait_for(hub.inbox.get(), 10)
                hub.taken()
                received.append(item.payload)
                hub.ack([item])
            return peak, received
        finally:
            await hub.close(grace_s=1.0)

    peak, received = asyncio.run(scenario())
    # Reading stops at the bound (the broker alone would let 100 through unacknowledged:
    # max_inflight_messages of the private broker).
    assert bound <= peak <= bound + 5
    assert sorted(received) == sorted(f"m{i}".encode() for i in range(total))


def _publish_edge_messages(port: int, count: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-bp",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topics.up_events("gw-bp"), f"m{i}".encode(), qos=1)
                 for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_writes_go_out_together_on_flush_and_before_the_socket_closes() -> None:
    client = FastClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    client._sock = ours
    assert client._sock_send(b"\x40\x02\x00\x01") == 4
    assert client._sock_send(b"\x40\x02\x00\x02") == 4
    assert client.want_write()
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(64)  # nothing on the wire before the flush
    client.flush()
    assert not client.want_write()
    theirs.settimeout(5)
    assert theirs.recv(64) == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    client._sock_send(b"\xe0\x00")  # DISCONNECT: paho closes the socket right after it
    client._sock_close()
    assert theirs.recv(64) == b"\xe0\x00"
    assert theirs.recv(64) == b""  # closed
    theirs.close()


def test_publishes_behind_a_small_window_all_go_out_in_order_and_survive_a_broker_restart(
        broker: PrivateBroker) -> None:
    """paho's in-flight window with the FIFO of queued messages: with a window of 3, 200
    publishes all reach a subscriber, in order; publishes made while the broker is down go
    out after the hub reconnects."""
    config = MqttSection(host="127.0.0.1", port=broker.port, client_id="hub-window")
    seen: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher",
                          protocol=mqtt.MQTTv5)
    watcher.on_message = lambda _c, _u, msg: seen.append(bytes(msg.payload))
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("window/#", qos=1)
    watcher.loop_start()

    async def scenario() -> None:
        hub = HubMqtt(config, "hub-window", asyncio.get_running_loop())
        hub.inflight_max = 3
        hub.client.max_inflight_messages_set(3)
        hub.start()
        try:
            await _until(hub.subscribed.is_set, "the hub's subscription")
            futures = [hub.publish(f"window/{i % 7}", f"{i}".encode()) for i in range(200)]
            await asyncio.wait_for(asyncio.gather(*futures), 20)
            assert not hub.client._queued
            await _until(lambda: len(seen) >= 200, "the watcher to get them all")
            await asyncio.to_thread(broker.stop)
            await _until(lambda: not hub.client.is_connected(), "the hub to see the loss")
            later = [hub.publish("window/later", f"later-{i}".encode()) for i in range(20)]
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(asyncio.gather(*later), 20)
        finally:
            await hub.close(grace_s=1.0)

    try:
        asyncio.run(scenario())
        assert seen[:200] == [f"{i}".encode() for i in range(200)]
    finally:
        watcher.loop_stop()
        watcher.disconnect()


@pytest.mark.parametrize("broker_limit", [7, 100])
def test_the_in_flight_window_follows_the_brokers_receive_maximum(tmp_path: Path,
                                                                  broker_limit: int) -> None:
    """paho ignores the Receive Maximum of the CONNACK; a broker disconnects a client that
    sends more unacknowledged publishes than that. The hub's window follows it (up to its
    own maximum), and 300 publishes go through."""
    with PrivateBroker(workdir=tmp_path / "broker",
                       extra_config=f"max_inflight_messages {broker_limit}\n") as limited:
        config = MqttSection(host="127.0.0.1", port=limited.port, client_id="hub-receive-max")

        async def scenario() -> int:
            hub = HubMqtt(config, "hub-rm", asyncio.get_running_loop())
            hub.start()
            try:
                await _until(hub.subscribed.is_set, "the hub's subscription")
                futures = [hub.publish("window/x", b"m") for _ in range(300)]
                await asyncio.wait_for(asyncio.gather(*futures), 20)
                assert hub.client.is_connected()
                return int(hub.client._max_inflight_messages)
            finally:
                await hub.close(grace_s=1.0)

        assert asyncio.run(scenario()) == min(broker_limit, 100)


def test_an_unreachable_broker_is_reported_once_per_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    """Retries go on (1 s, then doubling), but only the first failed connect is a warning."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once this is closed
    config = MqttSection(host="127.0.0.1", port=port, client_id="hub-unreachable")

    def attempts() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("hub cannot reach")]

    async def scenario() -> None:
        hub = HubMqtt(config, "hub-unreachable", asyncio.get_running_loop())
        hub.start()
        try:
            await _until(lambda: len(attempts()) >= 2, "a retry", timeout=5)
        finally:
            await hub.close(grace_s=1.0)

    with caplog.at_level(logging.DEBUG, logger="hub.mqtt"):
        asyncio.run(scenario())
    assert [r.levelno for r in attempts()][:2] == [logging.WARNING, logging.DEBUG]
