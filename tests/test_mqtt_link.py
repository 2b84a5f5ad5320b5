"""The uplink's MQTT link with paho served from the event loop (no network thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devstack.mosquitto import PrivateBroker
from sync.mqtt_link import Link, publish_props

pytestmark = pytest.mark.timeout(30)


async def _open(broker: PrivateBroker, *, keepalive: int = 15,
                inflight: int = 20) -> tuple[Link, list[tuple[str, str]]]:
    """A connected, attached link; `acks` collects what arrives on its ack topic."""
    loop = asyncio.get_running_loop()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="link-test",
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    client.max_inflight_messages_set(inflight)
    acks: list[tuple[str, str]] = []
    link = Link(loop, client, "s1", lambda e, s: acks.append((e, s)), lambda: None,
                "keyop/v1/down/link-test/ack")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    await asyncio.to_thread(client.connect, broker.host, broker.port, keepalive,
                            clean_start=True, properties=props)
    link.attach()
    reason = await asyncio.wait_for(link.connack, 10)
    assert not reason.is_failure
    return link, acks


async def _until(predicate: Any, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


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
        link, _acks = await _open(broker, inflight=count)
        try:
            assert not [t for t in threading.enumerate() if t not in threads
                        and t.name.startswith("paho")]
            sock = link.client.socket()
            assert isinstance(sock, socket.socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            props = publish_props("application/octet-stream")
            for _ in range(count):
                link.publish("t/burst", b"x" * size, props)
            # The kernel could not take ~6 MB at once: paho holds the rest for the writer.
            assert link.client.want_write()
            return await link.wait_all_acked(20)
        finally:
            link.disconnect()
            link.close()

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
        link, _acks = await _open(broker, keepalive=1)
        pongs: list[str] = []
        link.client.on_log = lambda _c, _u, _level, text: pongs.append(text)
        try:
            # paho sends PINGREQ from `loop_misc`: the loop's timer must call it.
            assert await _until(lambda: any("PINGRESP" in t for t in pongs), 5)
            assert not link.lost.is_set()
            sock = link.client.socket()
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            assert await _until(link.lost.is_set, 5)
            assert link.client.socket() is None
        finally:
            link.close()

    asyncio.run(main())
