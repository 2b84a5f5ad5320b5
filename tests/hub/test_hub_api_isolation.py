"""Supplier API reads cannot delay ingest: the ingest acknowledgement p99 of a real hub (real
Mosquitto, SQLite and PostgreSQL), alone and while 100 SSE catch-ups with one key read a log
of 20,000 packets. The readers run in a process of their own, so only the hub's own work is
measured."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hubkit import EPOCH, GATEWAY, RunningHub, incoming, make_event
from paho.mqtt.enums import CallbackAPIVersion

from devstack.mosquitto import PrivateBroker
from hub.config import hash_key, parse_config
from hub.store import Store
from sync import topics

STORED = 20_000
MEASURED = 200
STREAMS = 100

# The readers: open STREAMS catch-ups from cursor 0, print "open" once every one answered
# 200, read and drop until SIGTERM, then print how many events arrived.
READERS = r"""
import asyncio, signal, sys
port, key, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
events = 0
async def reader(opened):
    global events
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"GET /v1/stream?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             f"Authorization: Bearer {key}\r\n\r\n").encode())
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    opened.append(1)
    while chunk := await r.read(65536):
        events += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    opened = []
    tasks = [asyncio.create_task(reader(opened)) for _ in range(count)]
    while len(opened) < count:
        await asyncio.sleep(0.01)
        for t in tasks:
            if t.done():
                t.result()
    print("open", flush=True)
    await stop.wait()
    print(events, flush=True)
asyncio.run(main())
"""


class AckWatcher:
    """A gateway's MQTT client: publishes one packet and times the hub's ack of it."""

    def __init__(self, broker: PrivateBroker) -> None:
        self._acked = 0
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"gw-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(topics.down_ack(GATEWAY), 1)
        assert self._subscribed.wait(5), "SUBACK not received"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        if payload.get("sourceepoch") == EPOCH:
            with self._changed:
                self._acked = max(self._acked, int(payload["sequence"]))
                self._changed.notify_all()

    def latency(self, seq: int) -> float:
        """Seconds from publishing packet `seq` to its acknowledgement."""
        body = make_event(seq)
        start = time.perf_counter()
        self.client.publish(topics.up_events(GATEWAY), body, qos=1)
        with self._changed:
            assert self._changed.wait_for(lambda: self._acked >= seq, 10), f"no ack of {seq}"
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.timeout(90)
def test_sse_catch_ups_do_not_delay_ingest_acks(broker: PrivateBroker, hub_db_url: str) -> None:
    store = Store(hub_db_url)
    try:
        for first in range(1, STORED + 1, 2000):
            store.store_batch([incoming(seq) for seq in range(first, first + 2000)])
    finally:
        store.close()
    key = secrets.token_urlsafe(32)
    config = parse_config(f"""
hub: {{id: hub, database: "{hub_db_url}"}}
api: {{port: 0, max_streams_per_key: {STREAMS}, rate_per_s: 1000, burst: 1000}}
alerts: {{enabled: false}}
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: keyop-hub-p99, share_group: p99}}
suppliers:
  acme: {{api_key_hash: "{hash_key(key)}"}}
routes:
  - {{supplier: acme, types: ["*"]}}
""", "p99.yaml")
    hub = RunningHub(config, broker)
    gateway = AckWatcher(broker)
    readers: subprocess.Popen[str] | None = None
    seq = STORED
    try:
        def measure() -> list[float]:
            nonlocal seq
            found = []
            for _ in range(MEASURED):
                seq += 1
                found.append(gateway.latency(seq))
            return found

        for _ in range(20):  # warm-up: first connections, statement caches
            seq += 1
            gateway.latency(seq)
        alone = measure()
        assert hub.service.api is not None and hub.service.api.port
        readers = subprocess.Popen(
            [sys.executable, "-c", READERS, str(hub.service.api.port), key, str(STREAMS)],
            stdout=subprocess.PIPE, text=True)
        assert readers.stdout is not None
        assert readers.stdout.readline().strip() == "open", "the catch-ups did not open"
        loaded = measure()
        readers.terminate()
        received = int(readers.stdout.readline())
        readers.wait(10)
    finally:
        if readers is not None and readers.poll() is None:
            readers.kill()
        gateway.close()
        hub.close()
    base, busy = p99(alone) * 1000, p99(loaded) * 1000
    print(f"\ningest ack p99: {base:.1f} ms alone, {busy:.1f} ms with {STREAMS} SSE catch-ups "
          f"({received} events streamed meanwhile, of {STREAMS * STORED})")
    assert received > STREAMS, "the catch-ups streamed nothing while ingest was measured"
    assert busy <= 3 * base + 50, f"ack p99 {busy:.1f} ms with SSE vs {base:.1f} ms alone"
