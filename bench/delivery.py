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

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _workdir(name: str, workdir: Path | None) -> Iterator[Path]:
    """`workdir`, or a temporary folder removed after the run."""
    if workdir is not None:
        yield workdir
        return
    temporary = Path(tempfile.mkdtemp(prefix=f"keyop-bench-{name}-"))
    try:
        yield temporary
    finally:  # a million-packet outbox is a gigabyte: do not leave it
        shutil.rmtree(temporary, ignore_errors=True)


def run_drain(workdir: Path | None, *, backlog: int, live_rate: float, hub: str
              ) -> dict[str, Any]:
    """`keyop bench drain`: the backlog's drain after an outage, with live packets flowing."""
    from bench.drain import run_bench_drain

    with _workdir("drain", workdir) as work:
        return asyncio.run(run_bench_drain(work, backlog=backlog, live_rate=live_rate, hub=hub))


def run_faults(workdir: Path | None, *, scenario: str, kills: int, packets: int,
               outage: float) -> dict[str, Any]:
    """`keyop bench faults`: the kill loop or an outage; `ok` when nothing was lost or
    stored twice."""
    from devstack.faults import run_kill_loop

    with _workdir("faults", workdir) as work:
        if scenario == "kill":
            result = asyncio.run(run_kill_loop(work, kills=kills, packets=packets))
        else:
            result = asyncio.run(run_outage(work, scenario, outage))
    result["ok"] = result["lost"] == 0 and result["duplicates_in_store"] == 0
    return result


async def run_outage(workdir: Path, scenario: str, outage: float) -> dict[str, Any]:
    """Broker or hub away for `outage` seconds at ~100 packets/s, then back and drained."""
    from devstack.faults import FaultRig, live_latencies, percentile
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
