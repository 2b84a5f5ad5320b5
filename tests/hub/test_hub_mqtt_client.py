"""The hub's MQTT connection: it pushes back on the broker when ingest falls behind, then
catches up; its in-flight window follows the broker's; it reconnects and reports outages once.
(The fast paho client it runs on is checked in tests/common/test_paho_fast.py.)"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devstack.mosquitto import PrivateBroker
from hub.config import MqttSection
from hub.mqtt import HubMqtt
from sync import topics


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
        hub.connection.inflight_max = 3
        hub.client.set_window(3)
        hub.start()
        try:
            await _until(hub.subscribed.is_set, "the hub's subscription")
            futures = [hub.publish(f"window/{i % 7}", f"{i}".encode()) for i in range(200)]
            await asyncio.wait_for(asyncio.gather(*futures), 20)
            assert not hub.client.queued()
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
                return hub.client.window
            finally:
                await hub.close(grace_s=1.0)

        assert asyncio.run(scenario()) == min(broker_limit, 100)


def test_an_unreachable_broker_is_reported_once_per_outage(
        caplog: pytest.LogCaptureFixture) -> None:
    """Retries go on (1 s, then growing jittered waits), but only the first failed connect is
    a warning."""
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
