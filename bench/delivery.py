"""`keyop bench faults` and `keyop bench drain`: the delivery promise, at full length.

- `faults --scenario kill --kills 20 --packets 10000`: kill -9 the gateway at random instants;
  prints `lost`, `duplicates_in_store`, `restarts` (and the rest of the counts).
- `faults --scenario broker-outage|hub-outage --outage 60`: the outage at ~100 packets/s, then
  the drain; prints the counts and the live packets' latency during the drain (`live_p95_s`).
- `drain --backlog N`: N packets committed while the broker is away, then the broker comes
  back and the backlog drains in batches while live packets keep flowing; prints
  `drain_packets_per_s`, `live_latency_ms_p95` and `rss_mb_peak` (see `bench.drain`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def add_delivery_benches(bench_sub: Any) -> None:
    faults = bench_sub.add_parser("faults", help="fault runs with real processes, counted")
    faults.add_argument("--scenario", choices=["kill", "broker-outage", "hub-outage"],
                        default="kill")
    faults.add_argument("--kills", type=int, default=20)
    faults.add_argument("--packets", type=int, default=10_000)
    faults.add_argument("--outage", type=float, default=60.0, help="seconds")
    faults.add_argument("--workdir", type=Path, default=None)
    drain = bench_sub.add_parser("drain", help="time the drain of a backlog after an outage")
    drain.add_argument("--backlog", type=int, default=1_000_000)
    drain.add_argument("--live-rate", type=float, default=100.0,
                       help="live packets/s during the drain")
    drain.add_argument("--hub", choices=["acker", "real"], default="acker",
                       help="acker: a minimal subscriber that acks each batch (the edge's own "
                       "limit); real: `keyop hub` (the hub's ingest limit)")
    drain.add_argument("--workdir", type=Path, default=None)


def run_delivery_bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"keyop-bench-{args.bench}-"))
    try:
        return _run(args, workdir)
    finally:
        if args.workdir is None:  # a million-packet outbox is a gigabyte: do not leave it
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if args.bench == "drain":
        from bench.drain import run_bench_drain

        return asyncio.run(run_bench_drain(workdir, backlog=args.backlog,
                                           live_rate=args.live_rate, hub=args.hub))
    if args.scenario == "kill":
        from bench.faults import run_kill_loop

        result = asyncio.run(run_kill_loop(workdir, kills=args.kills, packets=args.packets))
    else:
        result = asyncio.run(run_outage(workdir, args.scenario, args.outage))
    result["ok"] = result["lost"] == 0 and result["duplicates_in_store"] == 0
    return result


async def run_outage(workdir: Path, scenario: str, outage: float) -> dict[str, Any]:
    """Broker or hub away for `outage` seconds at ~100 packets/s, then back and drained."""
    from bench.faults import FaultRig, live_latencies, percentile
    from devstack.stack import GATEWAY_ID, wait_gateway_online, wait_hub_online

    rig = FaultRig(workdir, cycle_s=0.01)
    started = time.monotonic()
    try:
        await rig.start()
        broker = rig.stack.broker
        assert broker is not None
        await rig.wait_committed(300, 60)
        before = rig.committed()
        if scenario == "broker-outage":
            broker.stop()
        else:
            rig.stack.stop_hub(kill=True)
        await asyncio.sleep(outage)  # the outage is the point of the run
        backlog = rig.committed() - before
        if scenario == "broker-outage":
            broker.start()
        else:
            rig.stack.start_hub()
        await asyncio.to_thread(wait_hub_online, broker.host, broker.port, 120)
        # Live latency counts from the gateway's reconnect (its backoff is its own matter).
        await asyncio.to_thread(wait_gateway_online, broker.host, broker.port, GATEWAY_ID, 120)
        since = time.time()
        back = time.monotonic()
        await asyncio.sleep(10)
        await rig.stop_production()
        counts = await rig.settle(300)
        drained_s = time.monotonic() - back
        latencies = live_latencies(rig.hub_db, since)
    finally:
        await rig.close()
    p95 = percentile(latencies, 95)
    return {**counts.as_dict(), "scenario": scenario, "outage_s": outage, "backlog": backlog,
            "settled_after_s": round(drained_s, 1), "live_packets": len(latencies),
            "live_p95_s": None if p95 is None else round(p95, 3),
            "seconds": round(time.monotonic() - started, 1)}
