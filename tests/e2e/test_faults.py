"""Fault tests with real processes (Mosquitto, Modbus simulator, `keyop run`, `keyop hub`),
counted end to end: what the edge committed against what the hub stored, per epoch.

Durations are shortened for CI (the suite must stay within its budget): outages of 10-12 s
instead of the issue's 60 s, 5 kills over ~2,000 packets instead of 20 over 10,000. The full
lengths run with `keyop bench faults --kills 20 --packets 10000` and
`keyop bench faults --scenario broker-outage --outage 60` (see README, "Delivery").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.faults import FaultRig, hub_rows, live_latencies, percentile, run_kill_loop
from devstack.stack import GATEWAY_ID, wait_gateway_online, wait_hub_online

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _run(workdir: Path, body: Callable[[FaultRig], Awaitable[dict[str, Any]]],
         **rig: Any) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        fault_rig = FaultRig(workdir, **rig)
        try:
            await fault_rig.start()
            return await body(fault_rig)
        finally:
            await fault_rig.close()

    return asyncio.run(main())


def _assert_complete(result: dict[str, Any]) -> None:
    assert result["lost"] == 0, result
    assert result["duplicates_in_store"] == 0, result
    assert result["seq_complete"], result
    assert result["committed"] > 0, result


def test_gateway_killed_at_random_instants_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of `keyop run` 5 times at random instants over ~2,000 packets (CI length)."""
    result = asyncio.run(run_kill_loop(tmp_path, kills=5, packets=2_000, seed=11))
    _assert_complete(result)
    assert result["restarts"] == 5
    assert result["committed"] >= 2_000


def test_broker_outage_drains_and_live_packets_are_not_starved(tmp_path: Path) -> None:
    """Broker stopped for 12 s (CI length; 60 s in the bench) at ~100 packets/s, then back:
    everything drains, and packets committed during the drain are not held behind it for the
    outage's length. The 2 s p95 goal is a speed figure, measured on a quiet machine by
    `keyop bench faults --scenario broker-outage`; here, on a loaded CI box, the bound is
    half the outage, which a drain that starved live packets would exceed."""

    async def body(rig: FaultRig) -> dict[str, Any]:
        broker = rig.stack.broker
        assert broker is not None
        await rig.wait_committed(300, 60)
        broker.stop()
        before = rig.committed()
        await asyncio.sleep(12)  # the outage itself: its length is the point of the test
        backlog = rig.committed() - before
        broker.start()
        await asyncio.to_thread(wait_hub_online, broker.host, broker.port, 60)
        # The drain starts when the gateway is back (its reconnect backoff is its own).
        await asyncio.to_thread(wait_gateway_online, broker.host, broker.port, GATEWAY_ID, 60)
        since = time.time()
        await asyncio.sleep(5)  # live traffic during and after the drain
        await rig.stop_production()
        counts = await rig.settle(90)
        latencies = live_latencies(rig.hub_db, since)
        return {**counts.as_dict(), "backlog": backlog, "live": len(latencies),
                "live_p95_s": percentile(latencies, 95)}

    result = _run(tmp_path, body)
    _assert_complete(result)
    assert result["backlog"] > 500, result
    assert result["live"] > 100, result
    assert result["live_p95_s"] is not None and result["live_p95_s"] < 6.0, result


def test_hub_outage_with_broker_up_loses_nothing(tmp_path: Path) -> None:
    """Hub stopped for 10 s (CI length) while the broker stays: the edge keeps every row until
    the hub, back, acknowledges it."""

    async def body(rig: FaultRig) -> dict[str, Any]:
        await rig.wait_committed(200, 60)
        rig.stack.stop_hub(kill=True)
        await asyncio.sleep(10)  # the outage
        rig.stack.start_hub()
        await rig.wait_committed(rig.committed() + 200, 60)
        await rig.stop_production()
        return (await rig.settle(90)).as_dict()

    _assert_complete(_run(tmp_path, body))


def test_broker_killed_while_hub_down_and_packets_queued_loses_nothing(tmp_path: Path) -> None:
    """The hub is down, the broker holds packets for the hub's session; then the broker is
    killed -9 (its queue is gone): the edge resends from the hub's last ack."""

    async def body(rig: FaultRig) -> dict[str, Any]:
        broker = rig.stack.broker
        assert broker is not None
        await rig.wait_committed(200, 60)
        rig.stack.stop_hub()
        await rig.wait_committed(rig.committed() + 400, 60)  # queued at the broker
        broker.stop(kill=True)
        broker.start()
        rig.stack.start_hub()
        await rig.wait_committed(rig.committed() + 200, 60)
        await rig.stop_production()
        return (await rig.settle(90)).as_dict()

    _assert_complete(_run(tmp_path, body))


def test_outbox_full_refuse_waits_and_loses_nothing(tmp_path: Path) -> None:
    """max_packets 300 under `refuse`, hub away: new packets wait (the alarm is up), nothing is
    evicted, and everything committed arrives once the hub is back."""

    async def body(rig: FaultRig) -> dict[str, Any]:
        await rig.wait_committed(100, 60)
        rig.stack.stop_hub()
        await asyncio.sleep(6)  # ~600 packets offered against a bound of 300
        rig.stack.start_hub()
        await asyncio.sleep(3)
        await rig.stop_production()
        return (await rig.settle(90)).as_dict()

    result = _run(tmp_path, body,
                  gateway_overrides={"outbox": {"max_packets": 300, "policy": "refuse"}})
    _assert_complete(result)
    assert result["evicted_named_by_gaps"] == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "ALARM outbox full" in log


def test_outbox_full_evict_names_every_dropped_packet_at_the_hub(tmp_path: Path) -> None:
    """max_packets 300 under `evict_low_priority`, broker away (so nothing leaves the edge):
    progress packets are evicted, each range named by a `keyop.outbox.gap` packet that reaches
    the hub; every committed sequence is at the hub either as itself or inside a gap record.
    (An evicted packet the uplink already held in memory may arrive as well: then the hub has
    both it and the gap record naming it, which is why gap records are counted directly.)"""

    async def body(rig: FaultRig) -> dict[str, Any]:
        broker = rig.stack.broker
        assert broker is not None
        await rig.wait_committed(100, 60)
        broker.stop()
        await rig.wait_committed(rig.committed() + 700, 60)
        broker.start()
        await asyncio.sleep(3)
        await rig.stop_production()
        counts = (await rig.settle(60)).as_dict()
        gap_records = sum(1 for _, _, kind, _ in hub_rows(rig.hub_db)
                          if kind == "keyop.outbox.gap")
        return {**counts, "gap_records_at_hub": gap_records}

    result = _run(tmp_path, body, gateway_overrides={
        "outbox": {"max_packets": 300, "policy": "evict_low_priority"}})
    assert result["lost"] == 0, result
    assert result["duplicates_in_store"] == 0, result
    assert result["gap_records_at_hub"] > 0, result
    log = (tmp_path / "gateway.log").read_text()
    assert "outbox full: evicted" in log


def test_corrupt_outbox_at_start_is_moved_aside_and_a_new_epoch_reaches_the_hub(
    tmp_path: Path,
) -> None:
    async def body(rig: FaultRig) -> dict[str, Any]:
        await rig.wait_committed(200, 60)
        await rig.stop_production()
        first = await rig.settle(60)
        assert first.lost == 0
        rig.stack.stop_gateway(kill=True)
        path = rig.stack.outbox_path
        path.write_bytes(b"garbage, not SQLite" * 100)
        for companion in ("-wal", "-shm"):
            path.with_name(path.name + companion).unlink(missing_ok=True)
        await rig.restart_gateway()
        rig.start_production()
        await asyncio.sleep(4)
        await rig.stop_production()
        counts = await rig.settle(60)
        return {**counts.as_dict(), "moved": [p.name for p in path.parent.glob("*.corrupt-*")]}

    result = _run(tmp_path, body)
    assert result["moved"], result
    assert result["epochs"] >= 2 or result["committed"] > 0, result
    log = (tmp_path / "gateway.log").read_text()
    assert "outbox file is corrupt" in log
    assert result["lost"] == 0 and result["duplicates_in_store"] == 0, result
