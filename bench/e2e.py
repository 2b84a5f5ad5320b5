"""`keyop bench e2e`: packets through mapping → outbox → uplink → broker → hub, measured.

The hub runs as its own process (as in production) with a private Mosquitto; this process is
the gateway side: the press mapping with a progress packet per part, the group-committed
outbox and the uplink. Latency is emit (sample fed to the engine) → the hub's acknowledgement,
which the hub sends only after its database commit.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import yaml

from common import yamlsrc
from common.heap import settle_heap
from config import DIR as EXAMPLES
from devstack.mosquitto import PrivateBroker
from devstack.stack import wait_hub_online
from drivers.base import Quality, Sample
from edge_store.outbox import Outbox
from edge_store.writer import GroupWriter
from gateway.runtime import Pipeline
from mapping.engine import Engine
from mapping.load import compile_document
from sync.uplink import Uplink, UplinkConfig

CONFIG_DIR = EXAMPLES
GATEWAY_ID = "bench-01"
SOURCE = f"plant1/{GATEWAY_ID}"
ACK_WAIT_S = 300.0


def _bench_engine(packets: int) -> Engine:
    doc = yamlsrc.load((CONFIG_DIR / "mapping.yaml").read_text(), "mapping.yaml")
    doc.value["stations"]["press-1"]["progress"]["every"] = 1
    return Engine(compile_document(doc))


def _samples(packets: int) -> list[tuple[str, Any]]:
    """Order, planned, an edge (→ started), then one good part per progress packet."""
    return [
        ("press.order", 4242),
        ("press.planned", packets + 1000),
        ("press.good", 0),
        ("press.busy", False),
        ("press.busy", True),
        *(("press.good", n) for n in range(1, packets)),
    ]


def _hub_config(work: Path, port: int) -> Path:
    hub = yaml.safe_load((CONFIG_DIR / "hub.yaml").read_text())
    hub["hub"]["database"] = f"sqlite:///{work / 'hub.db'}"
    hub["api"]["port"] = 0  # a free port: the example's 8710 may be taken
    hub["mqtt"].update(host="127.0.0.1", port=port, client_id=f"keyop-hub-bench-{os.getpid()}")
    hub["routes"] = [{"supplier": "acme", "work_orders": ["WO-*"]}]
    hub["gateways"] = {GATEWAY_ID: {"site": SOURCE.split("/")[0]}}
    path = work / "hub.yaml"
    path.write_text(yaml.safe_dump(hub))
    return path


def thread_cpu() -> dict[str, float]:
    """CPU seconds per Python thread name of this process (Linux /proc; names without digits,
    so paho's per-connection threads and the to_thread pool are summed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    result: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        raw = names.get(int(task.name), "other")
        name = "".join(c for c in raw.split(" ")[0] if not c.isdigit()).strip("-_") or raw
        result[name] = result.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return result


def _hub_counts(url: str) -> tuple[int, int, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM packets "
            "WHERE source = :source"), {"source": SOURCE}).one()
    engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def _start_hub(work: Path, port: int) -> subprocess.Popen[bytes]:
    with (work / "hub.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "WARNING", "hub", "-c",
             str(_hub_config(work, port))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work)


async def run_bench_e2e(packets: int, rate: float | None = None,
                        hub: str = "real") -> dict[str, Any]:
    """`hub="acker"` replaces `keyop hub` with a subscriber that acks each message at once
    (no validation, no database): what is left is the gateway's own cost and latency."""
    work = Path(tempfile.mkdtemp(prefix="keyop-bench-"))
    broker = PrivateBroker(workdir=work / "broker").start()
    outbox = Outbox(work / "outbox.db", SOURCE)
    hub_process = _start_hub(work, broker.port) if hub == "real" else None
    acker = None
    if hub == "acker":
        from bench.drain import Acker

        acker = Acker(broker.host, broker.port, outbox.epoch)
    writer = GroupWriter(outbox)
    writer.start()
    uplink = Uplink(UplinkConfig(host="127.0.0.1", port=broker.port, gateway=GATEWAY_ID,
                                 source=SOURCE, ack_timeout_s=10.0), outbox)
    pipeline = Pipeline(_bench_engine(packets), writer, SOURCE)
    pipeline.on_commit.append(lambda _seqs: uplink.wake())
    settle_heap()  # as `keyop run` does once started

    emitted_at = np.zeros(packets + 1)
    latencies = np.full(packets + 1, np.nan)
    acked = [0]

    def on_ack(seq: int) -> None:
        now = time.perf_counter()
        latencies[acked[0] + 1 : seq + 1] = now - emitted_at[acked[0] + 1 : seq + 1]
        acked[0] = seq

    uplink.on_ack = on_ack
    tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(pipeline.map_samples()),
             asyncio.create_task(pipeline.commit_drafts())]
    try:
        # The hub's start-up is not the gateway's cost: start the clock once it is subscribed.
        if hub_process is not None:
            await asyncio.to_thread(wait_hub_online, "127.0.0.1", broker.port)
        deadline = time.monotonic() + 30
        while not uplink.connected and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.05)
        samples = _samples(packets)
        first_packet_index = 4  # the busy edge is the sample that emits packet 1
        threads0 = thread_cpu()
        cpu0, t0 = time.process_time(), time.perf_counter()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, (signal, value) in enumerate(samples):
            if rate:
                due = start + max(0, index - first_packet_index) / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            now = time.perf_counter()
            if index >= first_packet_index:
                emitted_at[index - first_packet_index + 1] = now
            await pipeline.samples.put((Sample(signal, value, Quality.GOOD, time.time(),
                                               loop.time()),))
        done = await uplink.wait_acked(packets, ACK_WAIT_S)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        threads = {name: round(value - threads0.get(name, 0.0), 2)
                   for name, value in thread_cpu().items()}
    finally:
        await pipeline.close()
        for task in tasks[1:]:
            await task
        await writer.close()
        await uplink.stop()
        await asyncio.gather(tasks[0], return_exceptions=True)
        outbox.close()
        if hub_process is not None:
            hub_process.terminate()
            hub_process.wait(30)
        if acker is not None:
            acker.close()
        broker.close()
    if acker is not None:
        # The acker's own thread is not the gateway's cost.
        cpu -= sum(v for k, v in threads.items() if "acker" in k)
        rows = distinct = top = acker.contiguous
    else:
        rows, distinct, top = _hub_counts(f"sqlite:///{work / 'hub.db'}")
    measured = latencies[1:][~np.isnan(latencies[1:])] * 1000
    return {
        "packets": packets,
        "rate": rate,
        "hub": hub,
        "seconds": round(seconds, 3),
        "packets_per_s": round(packets / seconds, 1),
        "latency_ms_p50": round(float(np.percentile(measured, 50)), 2) if measured.size else None,
        "latency_ms_p99": round(float(np.percentile(measured, 99)), 2) if measured.size else None,
        "cpu_s_per_1k": round(cpu / packets * 1000, 4),
        "acked_all": done,
        "lost": packets - distinct,
        "unexpected": max(0, top - packets),
        "duplicates": rows - distinct,
        "messages": uplink.published_messages,
        "events_published": uplink.published_events,
        "live_events": uplink.live_events,
        "resends": uplink.resends,
        "transactions": writer.transactions,
        "thread_cpu_s": threads,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
