"""`keyop bench drain --backlog N`: a backlog built while the broker is away, then drained.

Phase 1 commits N realistic progress packets to an outbox with no broker (in transactions of
2,000, as a long outage leaves them). Phase 2 starts the broker and the receiving side and runs
the real uplink against the outbox; live packets keep arriving at `--live-rate` through the
group writer during the drain. Measured: `drain_packets_per_s` (backlog acknowledged and deleted
per second), the live packets' latency from commit to receipt at the other end (p50/p95), and
`rss_mb_peak` of this process (the backlog stays on disk: memory must not grow with N).

`--hub acker` (default) receives with a minimal subscriber that acks each message's sequence
range at once: the edge's own drain limit. `--hub real` runs `keyop hub` (its ingest, ~5,000
packets/s on this machine today, is then the limit).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from ulid import ULID

from bench.e2e import GATEWAY_ID, SOURCE, _start_hub
from devstack.mosquitto import PrivateBroker
from devstack.stack import wait_hub_online
from edge_store import Entry, GroupWriter, Outbox
from sync import topics
from sync.packet import Draft, format_sequence
from sync.packet_codec import render
from sync.uplink import Uplink, UplinkConfig

BUILD_CHUNK = 2_000


def _draft(good: int) -> Draft:
    return Draft("keyop.operation.progress", "WO-4242/OP10", time.time(), {
        "kopVersion": "1.0",
        "workOrder": {"id": "WO-4242", "customerOrders": ["PO-7781"]},
        "operation": {"id": "OP10", "name": "pressing"},
        "runId": "WO-4242.OP10.press-1.1",
        "equipment": {"path": "plant1/body/line-3/press-1", "level": "WorkCell"},
        "state": {"value": "Running"},
        "quantities": {"uom": "C62", "planned": 10**9, "produced": good, "good": good,
                       "scrap": 0, "rework": 0},
        "delta": {"good": 1},
        "tzOffset": "+01:00", "timeQuality": "synced",
    }, 0)


def _entry(good: int) -> Entry:
    draft = _draft(good)
    packet_id = str(ULID())

    def body(seq: int, epoch: str) -> bytes:
        return render(draft, id=packet_id, source=SOURCE, sequence=seq, epoch=epoch,
                      recorded=time.time())

    return Entry(packet_id, body, 0, draft.type)


class Acker:
    """Receives events like a hub that never fails and acks each message's range at once."""

    def __init__(self, host: str, port: int, epoch: str) -> None:
        self.epoch = epoch
        self.contiguous = 0
        self.ranges: dict[int, int] = {}
        self.received: dict[int, float] = {}  # single-event messages: seq -> arrival
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="keyop-bench-acker",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_a: c.subscribe("keyop/v1/up/+/events", qos=1)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        # As the hub does: without it, a small ack written right after another small write
        # waits for the TCP ACK of the first (Nagle).
        self.client.on_socket_open = _no_delay
        self.client.connect(host, port, 30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("bench acker could not subscribe")

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        user = dict(getattr(message.properties, "UserProperty", []))
        first_text, _, last_text = user.get("sequence", "0").partition("-")
        first, last = int(first_text), int(last_text or first_text)
        with self.lock:
            if first == last:
                self.received.setdefault(first, now)
            before = self.contiguous
            if first <= self.contiguous + 1:
                self.contiguous = max(self.contiguous, last)
            elif last > self.contiguous:
                self.ranges[first] = max(self.ranges.get(first, 0), last)
            while self.contiguous + 1 in self.ranges:
                self.contiguous = max(self.contiguous, self.ranges.pop(self.contiguous + 1))
            advanced = self.contiguous > before
            body = {"sourceepoch": self.epoch, "sequence": format_sequence(self.contiguous)}
        if advanced:
            self.client.publish(topics.down_ack(GATEWAY_ID), json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _no_delay(_c: Any, _u: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_bench_drain(workdir: Path, *, backlog: int, live_rate: float = 100.0,
                          hub: str = "acker") -> dict[str, Any]:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    broker = PrivateBroker(workdir=workdir / "broker")
    outbox = Outbox(workdir / "outbox.db", SOURCE)
    t0 = time.perf_counter()
    good = 0
    while good < backlog:
        n = min(BUILD_CHUNK, backlog - good)
        entries = [_entry(good + i + 1) for i in range(n)]
        await asyncio.to_thread(outbox.append, entries)
        good += n
    build_s = time.perf_counter() - t0
    rss_after_build = _rss_mb()
    file_mb = (workdir / "outbox.db").stat().st_size / 2**20

    broker.start()
    hub_process = None
    acker: Acker | None = None
    if hub == "real":
        hub_process = _start_hub(workdir, broker.port)
        await asyncio.to_thread(wait_hub_online, broker.host, broker.port, 60)
    else:
        acker = Acker(broker.host, broker.port, outbox.epoch)
    uplink = Uplink(UplinkConfig(host=broker.host, port=broker.port, gateway=GATEWAY_ID,
                                 source=SOURCE, ack_timeout_s=30.0), outbox)
    writer = GroupWriter(outbox)
    writer.start()
    committed_at: dict[int, float] = {}
    stop_live = asyncio.Event()

    async def live() -> None:
        loop = asyncio.get_running_loop()
        start, index = loop.time(), 0
        while not stop_live.is_set():
            index += 1
            due = start + index / live_rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            seq = await writer.append(_entry(backlog + index))
            committed_at[seq] = time.time()

    cpu0 = time.process_time()
    t1, wall1 = time.perf_counter(), time.time()
    task = asyncio.create_task(uplink.run())
    live_task = asyncio.create_task(live())
    try:
        drained = await uplink.wait_acked(backlog, 3_600)
        drain_s = time.perf_counter() - t1
        cpu = time.process_time() - cpu0
        stop_live.set()
        await live_task
        last = max(committed_at, default=backlog)
        await uplink.wait_acked(last, 60)
    finally:
        stop_live.set()
        await writer.close()
        await uplink.stop()
        await asyncio.gather(task, return_exceptions=True)
        stats = outbox.stats()
        outbox.close()
        if acker is not None:
            acker.close()
        if hub_process is not None:
            hub_process.terminate()
            hub_process.wait(60)
        broker.close()
    latencies: list[float] = []
    if acker is not None:
        latencies = [acker.received[s] - t for s, t in committed_at.items()
                     if s in acker.received]
    else:
        from devstack.faults import live_latencies

        latencies = live_latencies(workdir / "hub.db", wall1)
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))] * 1000, 1)

    return {
        "backlog": backlog,
        "hub": hub,
        "build_s": round(build_s, 1),
        "build_packets_per_s": round(backlog / build_s),
        "outbox_file_mb": round(file_mb, 1),
        "drained": drained,
        "drain_s": round(drain_s, 2),
        "drain_packets_per_s": round(backlog / drain_s),
        "drain_cpu_s_per_1k": round(cpu / backlog * 1000, 4),
        "live_packets": len(committed_at),
        "live_latency_ms_p50": pct(50),
        "live_latency_ms_p95": pct(95),
        "live_sent_ahead": uplink.live_events,
        "pending_after": stats.pending,
        "rss_mb_after_build": round(rss_after_build, 1),
        "rss_mb_peak": round(_rss_mb(), 1),
    }
