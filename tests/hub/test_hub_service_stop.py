"""`keyop hub` as a supervised service: notify protocol, /api/health and /api/ready without a
key, and SIGTERM in the middle of ingest: exit 0, nothing acknowledged that was not stored,
nothing lost once the edge resends after a restart. A real process, Mosquitto and database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from factories import progress_draft, render_event
from paho.mqtt.enums import CallbackAPIVersion

from devstack.mosquitto import PrivateBroker, free_port
from devstack.notify import NotifyListener
from devstack.stack import wait_hub_online
from hub.store import Store
from sync import topics

pytestmark = pytest.mark.slow

GATEWAY = "edge-07"
SOURCE = f"plant1/{GATEWAY}"
EPOCH = "01JCZ0K3M9B4X2W7Q5N8D1F6HA"
EVENTS = 20_000
PER_MESSAGE = 50


def _event(seq: int) -> bytes:
    draft = progress_draft(good=seq, scrap=0, planned=None, time=1_795_000_000.0 + seq)
    return render_event(draft, seq=seq, source=SOURCE, epoch=EPOCH,
                        id=f"01JDA5Q1Y4S7M2{seq:012d}")


class Edge:
    """Publishes batches as a gateway would and records the hub's acks."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.acks: list[int] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-edge",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.max_inflight_messages_set(100)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topics.down_ack(GATEWAY), qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.acks.append(int(json.loads(message.payload)["sequence"]))

    def acked(self) -> int:
        with self._lock:
            return max(self.acks, default=0)

    def publish(self, first: int, last: int) -> None:
        infos = []
        for start in range(first, last + 1, PER_MESSAGE):
            body = b"[" + b",".join(_event(s) for s in range(
                start, min(start + PER_MESSAGE, last + 1))) + b"]"
            infos.append(self.client.publish(topics.up_events(GATEWAY), body, qos=1))
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _hub(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", "hub", "-c", str(config)],
                            stdout=(config.parent / "hub.log").open("ab"),
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.timeout(180)
def test_sigterm_mid_ingest_acks_only_what_is_stored_and_loses_nothing(
        broker: PrivateBroker, hub_db_url: str, tmp_path: Path) -> None:
    api_port = free_port()
    config = tmp_path / "hub.yaml"
    config.write_text(f"""
hub: {{id: hub, database: "{hub_db_url}"}}
api: {{port: {api_port}}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-stop, share_group: st}}
suppliers: {{acme: {{}}}}
routes: [{{supplier: acme, work_orders: ["WO-*"]}}]
""")
    listener = NotifyListener(str(tmp_path / "notify"))
    edge = Edge(broker)
    hub = _hub(config, {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
    try:
        listener.wait_for("READY", "", 60)
        assert "broker" in listener.lines("STATUS")[0][1]
        wait_hub_online(broker.host, broker.port)
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base}/api/health").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/api/ready")  # no API key needed
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
        assert httpx.get(f"{base}/v1/orders").status_code == 401  # the rest still needs one

        sender = threading.Thread(target=edge.publish, args=(1, EVENTS))
        sender.start()
        _wait(lambda: edge.acked() > 0, "the first ack", 30)
        hub.send_signal(signal.SIGTERM)  # mid-ingest
        started = time.monotonic()
        assert hub.wait(20) == 0, (tmp_path / "hub.log").read_text()[-3000:]
        took = time.monotonic() - started
        sender.join(60)
        assert listener.wait_for("STOPPING", "", 1) == "1"
        assert listener.lines("WATCHDOG")
        store = Store(hub_db_url)
        try:
            stored = store.contiguous(SOURCE, EPOCH)
            # Nothing acknowledged that was not stored, and the stop did not wait for it all.
            assert 0 < edge.acked() <= stored < EVENTS, (edge.acked(), stored)
            assert took < 10, took
            # Restart; the edge resends from its ack, as the uplink does: nothing is lost.
            hub = _hub(config)
            wait_hub_online(broker.host, broker.port)
            edge.publish(edge.acked() + 1, EVENTS)
            _wait(lambda: edge.acked() == EVENTS, "every event acknowledged", 90)
            assert store.contiguous(SOURCE, EPOCH) == EVENTS
            assert store.count_packets() == EVENTS
        finally:
            store.close()
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(20) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        edge.close()
        listener.close()
