"""kill -9 of `keyop run` in the middle of runs: the gateway continues the run it was in.

Real processes (Mosquitto, the Modbus press simulator, `keyop hub`, `keyop run`). The test
drives the press itself, part by part, so the ground truth is what it counted: five orders,
two kills in each at random parts and instants (ten in all), a few parts made while the
gateway is down. The hub must end with exactly one `started` and one `completed` per order,
one run id per order, and the completed quantities equal to what the press counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.faults import count, hub_rows
from devstack.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ORDERS = 5
KILLS_PER_ORDER = 2
PLANNED = 30
CYCLE_S = 0.02


async def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        await asyncio.sleep(0.05)


def _packets(stack: Stack) -> list[dict[str, Any]]:
    """The hub's stored operation packets, in the edge's order."""
    rows = sorted(hub_rows(stack.workdir / "hub.db"), key=lambda row: (row[0], row[1]))
    return [json.loads(body) for _e, _s, kind, body in rows if kind.startswith("keyop.operation")]


def _stored(stack: Stack, kind: str, order: str) -> bool:
    return any(p["type"] == kind and p["data"]["workOrder"]["id"] == order
               for p in _packets(stack))


async def _polled(stack: Stack) -> None:
    """The gateway read the device again (a full poll cycle after a change on the press)."""
    first = stack.device.read_requests
    await _until("the gateway polls", lambda: stack.device.read_requests >= first + 6)


async def _restart(stack: Stack) -> None:
    stack.start_gateway()
    await stack.wait_polled()


async def _produce(stack: Stack, rng: random.Random, truth: dict[str, list[int]],
                   order: str, kills: set[int]) -> None:
    """Parts until the order's good count reaches PLANNED, killing the gateway at `kills`."""
    device, good, scrap, part = stack.device, 0, 0, 0
    while good < PLANNED:
        part += 1
        if rng.random() < 0.1:
            device.count_scrap()
            scrap += 1
        else:
            device.count_good()
            good += 1
        await asyncio.sleep(CYCLE_S * rng.uniform(0.5, 1.5))  # the press's cycle time
        if part in kills:
            await asyncio.sleep(rng.uniform(0, CYCLE_S))  # a random instant in the cycle
            stack.stop_gateway(kill=True)
            for _ in range(rng.randint(0, 3)):  # parts made while the gateway is down
                if good < PLANNED - 1:
                    device.count_good()
                    good += 1
            await _restart(stack)
    truth[order] = [good, scrap]


def test_a_gateway_killed_mid_run_continues_it(tmp_path: Path) -> None:
    rng = random.Random(16)
    truth: dict[str, list[int]] = {}

    async def main() -> dict[str, Any]:
        stack = Stack(tmp_path, progress_every=1, poll_interval="10ms", log_level="INFO")
        try:
            await stack.start()
            await stack.wait_polled()
            for index in range(ORDERS):
                number = 7001 + index
                order = f"WO-{number}"
                stack.device.set_order(number, PLANNED)
                await _polled(stack)
                stack.device.set_busy(True)
                await _until(f"{order} started at the hub",
                             lambda order=order: _stored(stack, "keyop.operation.started",
                                                         order))
                kills = set(rng.sample(range(2, PLANNED - 5), KILLS_PER_ORDER))
                await _produce(stack, rng, truth, order, kills)
                await _until(f"{order} completed at the hub",
                             lambda order=order: _stored(stack, "keyop.operation.completed",
                                                         order))
                stack.device.set_busy(False)
                await _polled(stack)
            await _until("the hub has every committed packet", lambda: (
                (c := count(stack.outbox_path, stack.workdir / "hub.db")).lost == 0
                and c.complete), 60)
            return {"packets": _packets(stack), "starts": stack.gateway_starts}
        finally:
            await stack.close()

    result = asyncio.run(main())
    assert result["starts"] == 1 + ORDERS * KILLS_PER_ORDER
    by_order: dict[str, list[dict[str, Any]]] = {}
    for packet in result["packets"]:
        by_order.setdefault(packet["data"]["workOrder"]["id"], []).append(packet)
    assert sorted(by_order) == sorted(truth)
    for order, packets in by_order.items():
        types = [p["type"].removeprefix("keyop.operation.") for p in packets]
        assert types.count("started") == 1, (order, types)
        assert types.count("completed") == 1, (order, types)
        assert types[0] == "started" and types[-1] == "completed", (order, types)
        assert "aborted" not in types, (order, types)
        # One run per order: the station's run number goes on from the order before.
        run = sorted(by_order).index(order) + 1
        assert {p["data"]["runId"] for p in packets} == {f"{order}.OP10.press-1.{run}"}
        quantities = packets[-1]["data"]["quantities"]
        assert [quantities["good"], quantities["scrap"]] == truth[order], order
        produced = [p["data"]["quantities"]["produced"] for p in packets]
        assert produced == sorted(produced), (order, produced)  # never counted back or twice
