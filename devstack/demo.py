"""`keyop demo`: the whole path on one box, a supplier's feed printed as packets arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.stack import SOURCE, Delivery, Stack
from edge_store.outbox import Outbox
from hub.store import Store
from simulators import scenario as sc

FEED_SUPPLIER = "acme"
OPERATION = "OP10"
SETTLE_TIMEOUT_S = 30.0


def feed_line(delivery: Delivery) -> str:
    """One readable line per packet: time, order, operation, station, event, counts."""
    event = delivery.event
    data = event.get("data", {})
    q = data.get("quantities", {})
    station = data.get("equipment", {}).get("path", "?").rsplit("/", 1)[-1]
    kind = event.get("type", "?").rsplit(".", 1)[-1]
    counts = (f"good={q.get('good', '-')} scrap={q.get('scrap', '-')} "
              f"planned={q.get('planned', '-')}")
    return (f"{event.get('time', '?')[11:23]}  {data.get('workOrder', {}).get('id', '?'):<8}  "
            f"{data.get('operation', {}).get('id', '?'):<5} {station:<8} {kind:<9} {counts}  "
            f"seq={int(event.get('sequence', 0))}")


@dataclass
class Outcome:
    """What a run produced, compared with the scenario's ground truth."""

    emitted: int
    stored_at_hub: int
    delivered_to_suppliers: int
    expected: int
    lost: int
    duplicates: int
    unexpected: int
    in_order: bool

    def summary(self) -> dict[str, Any]:
        return {
            "emitted": self.emitted,
            "stored_at_hub": self.stored_at_hub,
            "delivered_to_suppliers": self.delivered_to_suppliers,
            "expected": self.expected,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "in_order": self.in_order,
        }


def _key(event: dict[str, Any]) -> tuple[str, str, str, int, int, int | None]:
    data = event["data"]
    q = data["quantities"]
    return (event["type"], data["workOrder"]["id"], data["operation"]["id"], q["good"], q["scrap"],
            q.get("planned"))


def _expected_key(e: sc.Expected) -> tuple[str, str, str, int, int, int | None]:
    return (e.type, e.work_order, e.operation, e.good, e.scrap, e.planned)


def compare(expected: list[sc.Expected], deliveries: list[Delivery], supplier: str,
            emitted: int, stored: int) -> Outcome:
    """Ground truth against what one supplier (who follows every order) received."""
    mine = [d for d in deliveries if d.supplier == supplier]
    by_id: dict[str, Delivery] = {}
    for delivery in mine:
        by_id.setdefault(delivery.event["id"], delivery)
    duplicates = sum(n - 1 for n in Counter((d.supplier, d.event["id"]) for d in deliveries)
                     .values())
    received = Counter(_key(d.event) for d in by_id.values())
    wanted = Counter(_expected_key(e) for e in expected)
    sequences = [int(d.event["sequence"]) for d in mine]
    return Outcome(
        emitted=emitted,
        stored_at_hub=stored,
        delivered_to_suppliers=len({d.event["id"] for d in deliveries}),
        expected=len(expected),
        lost=sum((wanted - received).values()),
        duplicates=duplicates,
        unexpected=sum((received - wanted).values()),
        in_order=sequences == sorted(sequences),
    )


async def settle(stack: Stack, expected: int, supplier: str, timeout: float) -> None:
    """Wait (bounded) until the supplier has as many distinct packets as the truth expects."""
    assert stack.observer is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {d.event["id"] for d in stack.observer.snapshot() if d.supplier == supplier}
        if len(got) >= expected:
            return
        await asyncio.sleep(0.1)


def outcome(stack: Stack, expected: list[sc.Expected], supplier: str = FEED_SUPPLIER) -> Outcome:
    """Count everything after the gateway and hub have stopped."""
    with Outbox(stack.outbox_path, SOURCE) as outbox:
        emitted = outbox.stats().last_seq
    store = Store(stack.hub_db_url)
    try:
        stored = store.count_packets()
    finally:
        store.close()
    assert stack.observer is not None
    return compare(expected, stack.observer.snapshot(), supplier, emitted, stored)


def board_logins() -> dict[str, tuple[str | None, str]]:
    """The demo's board users, with fresh passwords: a planner of acme, the coordinator."""
    return {"acme-planner": (FEED_SUPPLIER, secrets.token_urlsafe(9)),
            "coordinator": (None, secrets.token_urlsafe(9))}


def board_banner(stack: Stack) -> str:
    """Where the board is, and how to log in."""
    lines = [f"keyop demo: progress board at http://127.0.0.1:{stack.hub_api_port}/board/"]
    for name, (supplier, password) in stack.board_users.items():
        lines.append(f"  log in as {name!r} with password {password!r} "
                     f"({'supplier ' + supplier if supplier else 'plant coordinator'})")
    return "\n".join(lines)


async def demo(duration: float | None, broker: str | None, workdir: Path | None) -> int:
    stack = Stack(workdir, broker, board_users=board_logins())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"keyop demo: files in {stack.workdir}; {FEED_SUPPLIER}'s feed below "
          f"(Ctrl-C stops)", file=sys.stderr)
    try:
        await stack.start()
        assert stack.observer is not None
        stack.observer.on_delivery = lambda d: (
            print(feed_line(d), flush=True) if d.supplier == FEED_SUPPLIER else None
        )
        await stack.wait_polled()
        print(board_banner(stack), file=sys.stderr, flush=True)
        scenario_stop = asyncio.Event()
        run = asyncio.create_task(sc.run(stack.device, sc.Scenario(loop=True, seed=7),
                                         scenario_stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        scenario_stop.set()
        truth = await run
        expected = truth.expected(operation=OPERATION, progress_every=stack.progress_every)
        print(f"keyop demo: stopping; waiting for {len(expected)} packets to settle",
              file=sys.stderr)
        await settle(stack, len(expected), FEED_SUPPLIER, SETTLE_TIMEOUT_S)
        stack.stop_gateway()
        stack.stop_hub()
        result = outcome(stack, expected)
        print(json.dumps(result.summary()), flush=True)
        return 0 if result.lost == 0 and result.duplicates == 0 else 1
    finally:
        await stack.close()


def run_demo(duration: float | None, broker: str | None, workdir: Path | None) -> int:
    return asyncio.run(demo(duration, broker, workdir))
