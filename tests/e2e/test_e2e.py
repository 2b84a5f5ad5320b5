"""End to end through real parts: Modbus simulator, Mosquitto, `keyop run`, `keyop hub`, a
supplier subscriber. The hub and the gateway are real processes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from devstack.demo import outcome, settle
from devstack.stack import Stack
from simulators import scenario as sc

pytestmark = pytest.mark.slow

PLAN = (sc.WorkOrder(1001, 12), sc.WorkOrder(1002, 8), sc.WorkOrder(1003, 10))


def _pending_rows(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


async def _wait_pending(path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pending_rows(path) < count:
        assert time.monotonic() < deadline, f"outbox never held {count} rows"
        await asyncio.sleep(0.1)


def test_scenario_reaches_suppliers_exactly_once_in_order(tmp_path: Path) -> None:
    async def main() -> tuple[object, list[sc.Expected], list[object]]:
        stack = Stack(tmp_path)
        try:
            await stack.start()
            await stack.wait_polled()
            truth = await sc.run(stack.device, sc.Scenario(orders=PLAN, seed=3))
            expected = truth.expected(operation="OP10", progress_every=stack.progress_every)
            await settle(stack, len(expected), "acme", 60)
            assert stack.stop_gateway() == 0
            assert stack.stop_hub() == 0
            assert stack.observer is not None
            return outcome(stack, expected), expected, list(stack.observer.snapshot())
        finally:
            await stack.close()

    result, expected, deliveries = asyncio.run(main())
    summary = result.summary()  # type: ignore[attr-defined]
    assert summary["lost"] == 0, summary
    assert summary["duplicates"] == 0, summary
    assert summary["unexpected"] == 0, summary
    assert summary["in_order"], summary
    assert summary["emitted"] == summary["stored_at_hub"] == len(expected), summary
    kinds = {e.type.rsplit(".", 1)[1] for e in expected}
    assert {"started", "progress", "completed"} <= kinds
    # bolt follows only the even-numbered order: it sees WO-1002's packets and nothing else.
    bolt = [d for d in deliveries if d.supplier == "bolt"]  # type: ignore[attr-defined]
    assert {d.event["data"]["workOrder"]["id"] for d in bolt} == {"WO-1002"}  # type: ignore[attr-defined]
    assert len(bolt) == sum(1 for e in expected if e.work_order == "WO-1002")


def test_gateway_killed_with_packets_pending_loses_nothing(tmp_path: Path) -> None:
    """Broker down, packets pile up in the outbox, the gateway is killed -9 and started again,
    then the broker returns: every packet arrives, none twice."""

    async def main() -> object:
        stack = Stack(tmp_path)
        try:
            await stack.start()
            await stack.wait_polled()
            assert stack.broker is not None
            stack.broker.stop()
            truth = await sc.run(stack.device, sc.Scenario(orders=PLAN[:2], seed=5))
            expected = truth.expected(operation="OP10", progress_every=stack.progress_every)
            await _wait_pending(stack.outbox_path, len(expected), 30)
            stack.stop_gateway(kill=True)
            stack.stop_hub()  # so that our observer is subscribed again before fan-out resumes
            stack.start_gateway()
            await stack.wait_polled()
            stack.broker.start()
            assert stack.observer is not None
            await asyncio.to_thread(stack.observer.wait_subscribed, 30)
            stack.start_hub()
            await settle(stack, len(expected), "acme", 60)
            stack.stop_gateway()
            stack.stop_hub()
            return outcome(stack, expected)
        finally:
            await stack.close()

    summary = asyncio.run(main()).summary()  # type: ignore[attr-defined]
    assert summary["lost"] == 0, summary
    assert summary["duplicates"] == 0, summary
    assert summary["unexpected"] == 0, summary
    assert summary["emitted"] == summary["stored_at_hub"] == summary["expected"], summary
