"""What the edge tests share: bounded async runs, a collector of a driver's samples, Modbus
device configs and register writes, a fake hub that acks like the real one."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from devstack.mosquitto import PrivateBroker
from drivers.base import Driver, Quality, Sample
from drivers.modbus import ModbusDeviceConfig, ModbusSignal
from simulators.modbus_registers import RegisterDevice
from sync import packet as pk
from sync import packet_codec as codec
from sync import topics

T = TypeVar("T")
GATEWAY = "edge-07"
SOURCE = f"plant1/{GATEWAY}"


def arun(factory: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Run one async test body with a hard bound (pytest-asyncio is not installed)."""

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout)

    return asyncio.run(bounded())


class Collector:
    """Consumes a driver's samples in a task; tests wait on conditions over what arrived."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.samples: list[Sample] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for sample in self.driver.samples():
            self.samples.append(sample)
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[Sample]], bool], timeout: float = 5.0
    ) -> None:
        """Wait (bounded) until `predicate(samples so far)` holds."""
        async def loop() -> None:
            while not predicate(self.samples):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    def latest(self, signal: str) -> Sample | None:
        for sample in reversed(self.samples):
            if sample.signal == signal:
                return sample
        return None

    async def close(self) -> None:
        await self.driver.close()
        await asyncio.wait_for(self.task, 3.0)


def good_values(samples: list[Sample]) -> dict[str, object]:
    """{signal: its last good value}."""
    out: dict[str, object] = {}
    for s in samples:
        if s.quality is Quality.GOOD:
            out[s.signal] = s.value
    return out


def config(name: str, port: int, *signals: ModbusSignal, timeout_s: float = 0.5,
           host: str = "127.0.0.1", unit: int = 1, max_gap: int = 8) -> ModbusDeviceConfig:
    """A Modbus device with a short timeout and a fast backoff, as the tests want it."""
    return ModbusDeviceConfig(name=name, host=host, port=port, unit_id=unit, timeout_s=timeout_s,
                              signals=signals, max_gap=max_gap, backoff_initial_s=0.05,
                              backoff_max_s=0.2)


def put(device: RegisterDevice, address: int, fmt: str, value: object) -> None:
    """Write `value` packed big-endian as `fmt` into the device's registers at `address`."""
    raw = struct.pack(fmt, value)
    device.words[address : address + len(raw) // 2] = struct.unpack(f">{len(raw) // 2}H", raw)


class FakeHub:
    """Subscribes to every gateway's events, stores by sequence, acks the contiguous prefix."""

    def __init__(self, broker: PrivateBroker, *, ack: bool = True) -> None:
        self.lock = threading.Lock()
        self.ack = ack
        self.arrivals: list[int] = []  # every sequence received, repeats included
        self.bodies: dict[int, list[bytes]] = {}
        self.messages: list[tuple[str, dict[str, str], int]] = []  # content type, user props, n
        self.sizes: list[int] = []
        self.contiguous = 0
        self.epoch = ""
        self.status: list[tuple[dict[str, Any], bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="fake-hub", protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 15)
        self.client.loop_start()
        assert self.subscribed.wait(5), "fake hub did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        # The broker runs without persistence: subscribe again after every (re)connect.
        client.subscribe([("keyop/v1/up/+/events", 1), ("keyop/v1/up/+/status", 1)])

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/status"):
            with self.lock:
                self.status.append((json.loads(message.payload), bool(message.retain)))
            return
        props = message.properties
        content_type = getattr(props, "ContentType", "")
        user = dict(getattr(props, "UserProperty", []))
        events = codec.decode_many(bytes(message.payload))
        if content_type == pk.CONTENT_TYPE:
            assert len(events) == 1 and isinstance(events[0], dict)
        else:
            assert content_type == pk.BATCH_CONTENT_TYPE
        with self.lock:
            self.messages.append((content_type, user, len(events)))
            self.sizes.append(len(message.payload))
            for obj in events:
                packet = codec.from_obj(obj)
                self.epoch = packet.sourceepoch
                self.arrivals.append(packet.seq)
                self.bodies.setdefault(packet.seq, []).append(json.dumps(obj).encode())
            while self.contiguous + 1 in self.bodies:
                self.contiguous += 1
        if self.ack:
            self.send_ack(topics.gateway_from_up_topic(message.topic) or GATEWAY)

    def send_ack(self, gateway: str = GATEWAY) -> mqtt.MQTTMessageInfo:
        with self.lock:
            body = {"sourceepoch": self.epoch, "sequence": pk.format_sequence(self.contiguous)}
        return self.client.publish(topics.down_ack(gateway), json.dumps(body), qos=1)

    def seen(self) -> set[int]:
        with self.lock:
            return set(self.arrivals)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Bounded poll: True as soon as `predicate` holds, False after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
