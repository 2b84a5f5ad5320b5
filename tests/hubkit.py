"""What the hub tests share: packets as the edge renders them, a hub on its own thread and
event loop, plain paho clients that record what they receive, bounded waits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from factories import EPOCH, SOURCE, progress_draft, render_event
from paho.mqtt.enums import CallbackAPIVersion

from devstack.mosquitto import PrivateBroker
from hub.config import HubConfig, parse_config
from hub.service import HubService
from hub.store import Incoming
from sync import packet_codec as codec
from sync import topics

EPOCH2 = "01JCZ0K3M9B4X2W7Q5N8D1F6HB"
BASE_TIME = 1_795_000_000.0
GATEWAY = "edge-07"


def make_event(
    seq: int,
    *,
    source: str = SOURCE,
    epoch: str = EPOCH,
    work_order: str = "WO-1001",
    operation: str = "OP30",
    params: dict[str, Any] | None = None,
    state: str = "Running",
    time_offset: float | None = None,
) -> bytes:
    """A valid operation.progress packet as the edge renders it; id derived from source and seq."""
    draft = progress_draft(
        work_order=work_order, operation=operation, good=10 * seq, scrap=0, planned=None,
        state=state, params=params, time=BASE_TIME + (seq if time_offset is None else time_offset),
    )
    # A ULID-shaped id unique per (source, epoch, seq): Crockford digits only.
    salt = sum(source.encode()) % 100 + (0 if epoch == EPOCH else 50)
    ident = f"01JDA5Q1Y4S7M2{salt:03d}{seq:09d}"
    return render_event(draft, seq=seq, source=source, epoch=epoch, id=ident,
                        recorded=BASE_TIME + seq)


def incoming(seq: int, **kw: Any) -> Incoming:
    raw = json.loads(make_event(seq, **kw))
    return Incoming(codec.from_obj(raw), raw)


def batch(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a condition with a bound; fail naming it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition; fail when it is missing."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                     if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in metrics:\n{text}")


class Client:
    """A paho MQTT 5 client that records what it receives."""

    def __init__(self, broker: PrivateBroker, *subscriptions: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if subscriptions:
            self.client.subscribe([(s, 1) for s in subscriptions])
            assert self._subscribed.wait(5), "SUBACK not received"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def received(self, prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def payloads(self, prefix: str = "") -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.received(prefix) if m.payload]

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def acked(edge: Client) -> list[int]:
    """The sequences the hub acknowledged for EPOCH, in order."""
    return [int(p["sequence"]) for p in edge.payloads() if p.get("sourceepoch") == EPOCH]


def events_by_id(client: Client) -> dict[str, int]:
    """{packet id: times received} over a supplier's topics."""
    counts: dict[str, int] = {}
    for payload in client.payloads("keyop/v1/sup/"):
        if "specversion" in payload:
            counts[payload["id"]] = counts.get(payload["id"], 0) + 1
    return counts


class HubThread:
    """A HubService on its own thread and event loop; `error` is what `run` raised."""

    def __init__(self, config: HubConfig) -> None:
        self.service = HubService(config)
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await self.service.run(self._stop)

        try:
            asyncio.run(run())
        except BaseException as error:  # read by the test
            self.error = error
        finally:
            self._started.set()
            self.ended.set()

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.error is None and self.service.mqtt is not None
                   and self.service.mqtt.subscribed.is_set(), "hub subscribed", timeout)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "hub did not stop"


class RunningHub(HubThread):
    """A HubThread that is online and subscribed when made; `close` raises what `run` raised."""

    def __init__(self, config: HubConfig, broker: PrivateBroker) -> None:
        watcher = Client(broker, topics.hub_status())
        super().__init__(config)
        # The hub publishes "online" right after subscribing, so once a watcher sees it the
        # ingest subscription is in place.
        wait_until(lambda: any(p.get("online") for p in watcher.payloads()), "hub online")
        watcher.close()
        # The status is retained (another hub's "online" may be what the watcher saw).
        self.wait_subscribed(10)

    def close(self) -> None:
        super().close()
        if self.error is not None:
            raise self.error


def hub_config(broker: PrivateBroker, db_url: str, client_id: str = "keyop-hub-test"
               ) -> HubConfig:
    return parse_config(
        f"""
hub: {{id: hub, database: "{db_url}"}}
api: {{port: 0}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: {client_id}, share_group: hubtest}}
suppliers:
  acme: {{partner_params: false}}
  bolt: {{partner_params: true, params: [pressForce]}}
routes:
  - supplier: acme
    work_orders: ["WO-1001", "WO-1003*"]
  - supplier: bolt
    work_orders: ["WO-1002", "WO-1003"]
""",
        "test-hub.yaml",
    )

