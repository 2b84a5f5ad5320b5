"""`keyop bench hub`: ingest, store, route and fan out, measured on the hub alone.

The hub (HubService) runs in this process on its own thread and event loop, against a private
Mosquitto and SQLite or PostgreSQL. A separate process plays the edges: it pre-renders valid v1
packets for several gateways and publishes them as CloudEvents batches (as an uplink draining a
backlog does), keeping at most `window` packets per gateway unacknowledged by the hub, and
measures each batch's publish -> hub acknowledgement latency (the hub acks after its commit).
Each of the N suppliers follows its own work orders, so every packet goes to one supplier, with
params of every class to redact.

The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.webhooks import BenchReceiver, drain_rate, wait_drained, webhook_yaml
from devstack.workload import render_progress, work_order
from sync import topics

# numpy, SQLAlchemy, the broker and the hub itself are imported where they are used: the CLI
# imports this module to build its parser, on every command.

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Ways a packet is made hostile (issue: poison input never stops ingest), in turn. Each keeps a
# valid identity, so the hub settles its sequence and the edges' acks go on.
_HOSTILE: list[tuple[tuple[str, ...], Any]] = [
    (("data", "quantities", "good"), "5"),
    (("data", "quantities", "planned"), 2**64 - 1),
    (("time",), "2026-13-45T25:61:61.000Z"),
    (("data", "workOrder", "id"), "W" * 300),
    (("data", "quantities", "scrap"), float("nan")),
    (("data", "quantities", "rework"), 5.0),
]


def is_hostile(seq: int, percent: float) -> bool:
    """Whether packet `seq` is one of the hostile `percent` %, spread evenly."""
    return int(seq * percent / 100) != int((seq - 1) * percent / 100)


def _hostile(payload: bytes, seq: int) -> bytes:
    obj = json.loads(payload)
    path, value = _HOSTILE[seq % len(_HOSTILE)]
    where = obj
    for part in path[:-1]:
        where = where[part]
    where[path[-1]] = value
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def _edge_main(port: int, gateways: list[str], per_gateway: int, suppliers: int, batch: int,
               window: int, hostile: float, ready: Any, go: Any, results: Any) -> None:
    """The edges: publish every gateway's packets in batches, measure ack latency."""
    payloads = {g: [_hostile(render_progress(g, seq, suppliers), seq) if is_hostile(seq, hostile)
                    else render_progress(g, seq, suppliers) for seq in range(1, per_gateway + 1)]
                for g in gateways}
    acked = dict.fromkeys(gateways, 0)
    cond = threading.Condition()
    sent_at: dict[str, list[tuple[int, float]]] = {g: [] for g in gateways}
    latencies: list[float] = []
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        gateway = msg.topic.split("/")[3]
        seq = int(json.loads(msg.payload)["sequence"])
        now = time.monotonic()
        with cond:
            if seq > acked[gateway]:
                acked[gateway] = seq
                pending = sent_at[gateway]
                while pending and pending[0][0] <= seq:
                    latencies.append(now - pending.pop(0)[1])
                cond.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-edges-{os.getpid()}",
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.max_inflight_messages_set(50)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe([(topics.down_ack(g), 1) for g in gateways])
    subscribed.wait(10)
    ready.set()
    go.wait()
    started = time.monotonic()
    position = dict.fromkeys(gateways, 0)
    while any(position[g] < per_gateway for g in gateways):
        for gateway in gateways:
            first = position[gateway]
            if first >= per_gateway:
                continue
            with cond:
                while first - acked[gateway] >= window:
                    cond.wait(5)
            last = min(first + batch, per_gateway)
            body = b"[" + b",".join(payloads[gateway][first:last]) + b"]"
            with cond:
                sent_at[gateway].append((last, time.monotonic()))
            client.publish(topics.up_events(gateway), body, qos=1)
            position[gateway] = last
    with cond:
        cond.wait_for(lambda: all(acked[g] >= per_gateway for g in gateways), 600)
    finished = time.monotonic()
    client.disconnect()
    client.loop_stop()
    results.put({"started": started, "finished": finished, "latencies": latencies,
                 "acked": sum(acked.values())})


def _config(broker: Any, url: str, suppliers: int, supplier_batch: bool = False,
            client_id: str = "keyop-hub-bench", roles: str = "ingest, fanout",
            webhooks: tuple[list[str], dict[str, str]] | None = None) -> Any:
    from hub.config import parse_config

    names = _suppliers(suppliers)
    flags = ", ".join(f"{role}: {str(role in roles).lower()}" for role in ("ingest", "fanout"))
    lines = [f'hub: {{id: bench, database: "{url}", {flags}}}',
             f"mqtt: {{host: 127.0.0.1, port: {broker.port}, client_id: {client_id}, "
             "share_group: bench, ingest_queue: 2000}",
             "api: {enabled: false}", "alerts: {enabled: false}"]
    section, endpoints = webhooks or ([], {})
    lines += [*section, "suppliers:"]
    batch = str(supplier_batch).lower()
    lines += [f"  {n}: {{partner_params: {str(i % 2 == 0).lower()}, batch: {batch}"
              + (f", {endpoints[n]}" if n in endpoints else "") + "}"
              for i, n in enumerate(names)]
    lines.append("routes:")
    for i, name in enumerate(names):
        orders = ", ".join(work_order(i, k) for k in range(4))
        lines.append(f"  - {{supplier: {name}, work_orders: [{orders}]}}")
    return parse_config("\n".join(lines) + "\n", "bench-hub.yaml")


def _suppliers(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def _worker_main(port: int, url: str, suppliers: int, supplier_batch: bool, index: int,
                 roles: str, ready: Any, stop_flag: Any) -> None:
    """An extra hub worker process on the same shared subscription and database."""
    from hub.service import HubService

    service = HubService(_config(_Port(port), url, suppliers, supplier_batch,
                                 client_id=f"keyop-hub-bench-{index}", roles=roles))

    async def run() -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop_flag.is_set():
                if service.mqtt is not None and service.mqtt.subscribed.is_set():
                    ready.set()
                await asyncio.sleep(0.1)  # polls a cross-process flag: no event to await
            stop.set()

        watcher = asyncio.create_task(watch())
        await service.run(stop)
        await watcher

    asyncio.run(run())


def _database(kind: str, work: Path) -> tuple[str, Any]:
    import sqlalchemy as sa

    if kind == "sqlite":
        return f"sqlite:///{work / 'hub.db'}", None
    base = os.environ.get("KEYOP_BENCH_POSTGRES_URL") or os.environ.get(
        "KEYOP_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    schema = f"bench_{os.getpid()}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


def run_bench_hub(packets: int, suppliers: int, db: str, *, gateways: int = 4,
                  batch: int = 50, window: int = 500, supplier_batch: bool = False,
                  workers: int = 1, split_roles: bool = False, hostile: float = 0.0,
                  webhooks: bool = False) -> dict[str, Any]:
    import numpy as np

    from devstack.mosquitto import PrivateBroker
    from hub.feed import Feed
    from hub.service import HubService

    if split_roles and workers < 2:
        raise ValueError("--split-roles needs --workers 2 or more")
    work = Path(tempfile.mkdtemp(prefix="keyop-bench-hub-"))
    url, drop = _database(db, work)
    per_gateway = -(-packets // gateways)
    names = [f"bench-{i:02d}" for i in range(gateways)]
    # --webhooks: one endpoint per supplier, on a receiver process on loopback.
    receiver = BenchReceiver().start() if webhooks else None
    hooks = webhook_yaml(receiver, _suppliers(suppliers), work) if receiver else None
    with PrivateBroker(workdir=work / "broker") as broker:
        # Split roles: this process only fans out, the extra workers only ingest.
        config = _config(broker, url, suppliers, supplier_batch,
                         roles="fanout" if split_roles else "ingest, fanout", webhooks=hooks)
        service = HubService(config)
        loop_box: dict[str, Any] = {}
        ready_hub = threading.Event()

        def hub_main() -> None:
            async def run() -> None:
                loop_box["loop"] = asyncio.get_running_loop()
                loop_box["stop"] = stop = asyncio.Event()
                ready_hub.set()
                await service.run(stop)

            asyncio.run(run())

        hub_thread = threading.Thread(target=hub_main, name="bench-hub", daemon=True)
        hub_thread.start()
        ready_hub.wait(30)
        deadline = time.monotonic() + 30
        while not (service.mqtt and service.mqtt.subscribed.is_set()):
            if time.monotonic() > deadline:
                raise RuntimeError("the hub did not subscribe within 30 s")
            time.sleep(0.05)

        ctx = mp.get_context("spawn")
        # Extra hub workers (processes: the GIL limits one) share the ingest; the fan-out lease
        # stays with this process's hub, which took it first (the extra ones do not fan out at
        # all with split roles).
        stop_workers = ctx.Event()
        extra = []
        for index in range(1, workers):
            up = ctx.Event()
            worker = ctx.Process(target=_worker_main, args=(
                broker.port, url, suppliers, supplier_batch, index,
                "ingest" if split_roles else "ingest, fanout", up, stop_workers))
            worker.start()
            if not up.wait(120):
                raise RuntimeError("an extra hub worker did not subscribe")
            extra.append(worker)
        ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        edge = ctx.Process(target=_edge_main, args=(broker.port, names, per_gateway, suppliers,
                                                    batch, window, hostile, ready, go, results))
        edge.start()
        if not ready.wait(120):
            raise RuntimeError("the edge process did not start")
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        go.set()
        edge_result = results.get(timeout=900)
        edge.join(30)
        total = per_gateway * gateways
        # Fan-out is done when every supplier's cursor has reached the end of its feed.
        assert service.store is not None
        store = service.store
        heads = Feed(store).heads(config.suppliers)
        while any(store.get_cursors(config.suppliers)[s] < heads[s] for s in heads):
            time.sleep(0.05)
        t_fanout = time.monotonic()
        t_webhooks = _wait_webhooks(service) if receiver else None
        live_events, live_requests = (receiver.events, receiver.requests) if receiver else (0, 0)
        hooked: dict[str, Any] = {}
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        fanout = service.fanout
        assert fanout is not None
        stored = store.count_packets()
        dead_letters = sum(row.items for row in store.dead_letter_rows())
        loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
        hub_thread.join(60)
        if receiver is not None:
            # Capacity too: endpoints new to the database drain the whole stored feed.
            fresh = webhook_yaml(receiver, _suppliers(suppliers), work, endpoint="drain")
            hooked = drain_rate(_config(broker, url, suppliers, supplier_batch,
                                        webhooks=fresh), receiver)
        stop_workers.set()
        for worker in extra:
            worker.join(60)
    if drop is not None:
        drop()
    if receiver is not None and t_webhooks is not None:
        receiver.stop()
        # Live: events the receiver took (answered 200) while ingest ran, over the time from
        # the first publish to the moment every endpoint's cursor reached its feed's head.
        hooked.update({"webhook_events": live_events, "webhook_requests": live_requests,
                       "webhook_s": round(t_webhooks - t0, 3),
                       "webhook_events_per_s": round(live_events / (t_webhooks - t0))})
    latencies = np.array(edge_result["latencies"]) * 1000.0
    ingest_s = edge_result["finished"] - edge_result["started"]
    fanout_s = t_fanout - t0
    return {
        "packets": total, "suppliers": suppliers, "db": db, "gateways": gateways,
        "batch": batch, "window": window, "supplier_batch": supplier_batch,
        "workers": workers, "split_roles": split_roles, "stored": stored,
        "hostile_percent": hostile,
        "hostile": gateways * sum(is_hostile(s, hostile) for s in range(1, per_gateway + 1)),
        # Bad events the hub dead-lettered (a letter per message, with its count of them).
        "dead_letters": dead_letters,
        # This process's count; with extra workers theirs live in their processes (None).
        "duplicates": service.duplicates if workers == 1 else None,
        "fanout_messages": fanout.published,
        "ingest_s": round(ingest_s, 3), "fanout_s": round(fanout_s, 3),
        "hub_cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime
                           - cpu_before.ru_utime - cpu_before.ru_stime, 2),
        "ack_latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "routed_packets_per_s": round(total / fanout_s),
        "ingest_packets_per_s": round(total / ingest_s),
        "fanout_messages_per_s": round(fanout.published / fanout_s),
        "ack_latency_ms_p99": round(float(np.percentile(latencies, 99)), 2),
        **hooked,
    }


def _wait_webhooks(service: Any) -> float:
    """When every webhook endpoint's saved cursor reached its supplier's feed head."""
    wait_drained(service.webhook_status)
    return time.monotonic()
