"""Params of class `local` stay in the gateway: stored in the outbox, never published."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from factories import outbox_entry, progress_draft

from devstack.mosquitto import PrivateBroker
from edge_store import Outbox
from sync import packet_codec as codec
from sync.uplink import Uplink, UplinkConfig, for_uplink

pytestmark = pytest.mark.timeout(30)

SOURCE = "plant1/edge-07"
SECRET = {"value": "recipe-7/rev-c", "class": "local"}
FORCE = {"value": 8.1, "uom": "KNT", "class": "restricted"}


class Listener:
    """Every event payload the broker receives on the gateways' event topics."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.three = threading.Event()  # the test's three packets have arrived
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listener",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("keyop/v1/up/+/events", 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 15)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.raw.append(bytes(message.payload))
            self.events += codec.decode_many(bytes(message.payload))
            if len(self.events) >= 3:
                self.three.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_local_params_are_stored_but_never_published(broker: PrivateBroker,
                                                     tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", SOURCE)
    outbox.append([
        outbox_entry(progress_draft(params={"recipe": SECRET, "force": FORCE})),
        outbox_entry(progress_draft(params={"recipe": SECRET})),
        outbox_entry(progress_draft(params={"force": FORCE})),
    ])
    listener = Listener(broker)
    config = UplinkConfig(host=broker.host, port=broker.port, gateway="edge-07", source=SOURCE,
                          ack_timeout_s=2.0, backoff_min_s=0.1, backoff_max_s=0.5,
                          keepalive_s=5)

    async def main() -> None:
        uplink = Uplink(config, outbox)
        task = asyncio.create_task(uplink.run())
        await asyncio.to_thread(listener.three.wait, 10)
        await asyncio.wait_for(uplink.stop(), 10)
        await task

    try:
        asyncio.run(main())
    finally:
        listener.close()
    sent = {codec.from_obj(e).seq: e["data"].get("params") for e in listener.events}
    assert sent == {1: {"force": FORCE}, 2: None, 3: {"force": FORCE}}
    assert not any(b"recipe-7" in raw for raw in listener.raw)
    # The gateway itself keeps them: the outbox rows are as the engine made them.
    stored = [json.loads(row.body)["data"]["params"] for row in outbox.pending(0, 10)]
    assert stored[0]["recipe"] == SECRET and stored[1] == {"recipe": SECRET}
    outbox.close()


def test_bodies_without_local_params_pass_byte_for_byte() -> None:
    body = codec.render(progress_draft(params={"note": {"value": '"class":"local"',
                                                     "class": "public"}}),
                     id="01JDA5Q1Y4S7M2R8K3VZC6TB9E", source=SOURCE, sequence=1,
                     epoch="01JCZ0K3M9B4X2W7Q5N8D1F6HA", recorded=1_795_000_000.2)
    assert for_uplink(body) is body
