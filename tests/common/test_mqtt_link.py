"""The MQTT adapter (common/mqtt.py) with paho served from the event loop (no network thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edgekit import until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt import MqttClient
from common.mqtt_properties import publish_properties
from devstack.mosquitto import PrivateBroker

pytestmark = pytest.mark.timeout(30)


async def _open(broker: PrivateBroker, *, keepalive: int = 15,
                inflight: int = 20) -> MqttClient:
    """A connected client served by the loop, as the uplink opens one."""
    loop = asyncio.get_running_loop()
    link = MqttClient(loop, "link-test", inflight_max=inflight, window=inflight,
                      queue_offline=False)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    link.configure(broker.host, broker.port, keepalive, clean_start=True, properties=props)
    assert await link.open()
    reason = await asyncio.wait_for(link.connack, 10)
    assert reason is not None and not reason.is_failure
    return link


def test_no_network_thread_and_a_full_socket_buffer_drains(broker: PrivateBroker) -> None:
    """Publishes beyond what the kernel takes at once wait in paho and go out through the
    loop's writer; every one is PUBACKed."""
    received: list[int] = []
    done = threading.Event()
    count, size = 200, 32_000
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="link-test-sub",
                      protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_connect = lambda c, *_a: c.subscribe("t/burst", qos=1)
    sub.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        received.append(len(message.payload))
        if len(received) == count:
            done.set()

    sub.on_message = on_message
    sub.connect(broker.host, broker.port, 15)
    sub.loop_start()
    assert subscribed.wait(5)

    async def main() -> bool:
        threads = set(threading.enumerate())
        link = await _open(broker, inflight=count)
        try:
            assert not [t for t in threading.enumerate() if t not in threads
                        and t.name.startswith("paho")]
            sock = link.client.socket()
            assert isinstance(sock, socket.socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            props = publish_properties("application/octet-stream")
            for _ in range(count):
                link.publish("t/burst", b"x" * size, properties=props)
            # Sent at the end of this turn of the loop: the kernel cannot take ~6 MB at once,
            # so the rest waits for the writer.
            assert link.client.want_write()
            await asyncio.sleep(0)
            assert link.client.want_write()
            return await link.wait_all_acked(20)
        finally:
            link.disconnect()
            link.close_socket()

    try:
        assert asyncio.run(main())
        assert done.wait(10)
        assert received == [size] * count
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_keepalive_runs_on_the_loop_and_a_dead_socket_is_noticed(
    broker: PrivateBroker,
) -> None:
    async def main() -> None:
        link = await _open(broker, keepalive=1)
        pongs: list[str] = []
        link.client.on_log = lambda _c, _u, _level, text: pongs.append(text)
        try:
            # paho sends PINGREQ from `loop_misc`: the loop's timer must call it.
            assert await until(lambda: any("PINGRESP" in t for t in pongs), 5)
            assert not link.lost.is_set()
            sock = link.client.socket()
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            assert await until(link.lost.is_set, 5)
            assert link.client.socket() is None
        finally:
            link.close_socket()

    asyncio.run(main())
