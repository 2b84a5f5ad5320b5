"""A small production plan for the press simulator, and the ground truth of what it did.

`run(device, scenario)` drives a device in real time (monotonic deadlines) through a plan of work
orders and records a cycle log; `GroundTruth.expected(...)` turns the log into the packets the
gateway must emit, by the rules the mapping engine implements:

- `keyop.operation.started` when busy rises with an order set (good 0, scrap 0, planned P);
- every scrap cycle: `keyop.operation.scrapped` with the run's cumulative good/scrap after it;
- every good cycle that makes good a multiple of `progress_every` while good < planned:
  `keyop.operation.progress`;
- the good cycle that makes good == planned: `keyop.operation.completed` (not also a progress).

Everything random comes from one `random.Random(seed)`, so a seed reproduces a run exactly
(apart from real-time jitter of the event loop, which the log's `at` field shows).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count
from typing import Protocol

STARTED = "keyop.operation.started"
PROGRESS = "keyop.operation.progress"
SCRAPPED = "keyop.operation.scrapped"
COMPLETED = "keyop.operation.completed"


class Device(Protocol):
    """What the runner needs from a simulated station (`PressDevice` has it)."""

    def set_order(self, number: int, planned: int) -> None: ...

    def set_busy(self, busy: bool) -> None: ...

    def count_good(self) -> int: ...

    def count_scrap(self) -> int: ...

    @property
    def good(self) -> int: ...

    @property
    def scrap(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """One order of the plan: number 1001 is work order "WO-1001"."""

    number: int
    planned: int

    @property
    def work_order(self) -> str:
        return f"WO-{self.number}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """The production plan and its timing; all durations in seconds."""

    orders: tuple[WorkOrder, ...] = (WorkOrder(1001, 20), WorkOrder(1002, 15), WorkOrder(1003, 25))
    #: Mean cycle time and the half-width of its uniform noise.
    cycle_s: float = 0.12
    cycle_jitter_s: float = 0.03
    #: Probability that a cycle produces a scrap instead of a good part.
    scrap_rate: float = 0.1
    #: Pause between setting an order and raising busy (busy is 0 meanwhile).
    changeover_s: float = 0.4
    seed: int = 0
    #: Repeat the plan forever with new order numbers (max + 1, ...), for the demo.
    loop: bool = False

    def __post_init__(self) -> None:
        if not self.orders:
            raise ValueError("scenario needs at least one work order")
        if any(o.planned < 1 for o in self.orders):
            raise ValueError("planned quantities must be >= 1")
        if not 0.0 <= self.scrap_rate < 1.0:
            raise ValueError("scrap_rate must be in [0, 1)")
        if self.cycle_jitter_s > self.cycle_s or self.cycle_s <= 0:
            raise ValueError("cycle_s must be > 0 and >= cycle_jitter_s")


class Step(StrEnum):
    """Kinds of entries in the cycle log."""

    ORDER = "order"  # order set, busy still 0 (changeover)
    START = "start"  # busy rose
    GOOD = "good"
    SCRAP = "scrap"
    END = "end"  # busy dropped, order complete


@dataclass(frozen=True, slots=True)
class CycleEvent:
    """One entry of the cycle log.

    `good`/`scrap` are the run's cumulative counts after the step; `counter_good`/`counter_scrap`
    are the device's raw (wrapping) counters after it; `at` is seconds since the run began.
    """

    step: Step
    order: int
    planned: int
    good: int
    scrap: int
    counter_good: int
    counter_scrap: int
    at: float

    @property
    def work_order(self) -> str:
        return f"WO-{self.order}"


@dataclass(frozen=True, slots=True)
class Expected:
    """A packet the gateway must emit, reduced to what the ground truth can know."""

    type: str
    work_order: str
    operation: str
    good: int
    scrap: int
    planned: int


def expected_packets(
    events: Iterable[CycleEvent], *, operation: str, progress_every: int = 5
) -> list[Expected]:
    """The packets a cycle log must produce, in emission order (rules in the module docstring)."""
    if progress_every < 1:
        raise ValueError("progress_every must be >= 1")
    out: list[Expected] = []
    for ev in events:
        kind: str | None = None
        if ev.step is Step.START:
            kind = STARTED
        elif ev.step is Step.SCRAP:
            kind = SCRAPPED
        elif ev.step is Step.GOOD and ev.good == ev.planned:
            kind = COMPLETED
        elif ev.step is Step.GOOD and ev.good % progress_every == 0 and ev.good < ev.planned:
            kind = PROGRESS
        if kind is not None:
            out.append(Expected(kind, ev.work_order, operation, ev.good, ev.scrap, ev.planned))
    return out


@dataclass
class GroundTruth:
    """What the simulator did: the cycle log, in order, up to the end or the stop."""

    events: list[CycleEvent] = field(default_factory=list)
    stopped: bool = False

    def expected(self, *, operation: str, progress_every: int = 5) -> list[Expected]:
        """The packets the gateway must emit for this log."""
        return expected_packets(self.events, operation=operation, progress_every=progress_every)

    def cycles(self) -> list[CycleEvent]:
        """Only the GOOD/SCRAP entries: one per counter increment on the device."""
        return [e for e in self.events if e.step in (Step.GOOD, Step.SCRAP)]


def iter_orders(scenario: Scenario) -> Iterator[WorkOrder]:
    """The plan's orders; with `loop`, repeated forever with fresh numbers after the highest."""
    yield from scenario.orders
    if not scenario.loop:
        return
    numbers = count(max(o.number for o in scenario.orders) + 1)
    while True:
        for order in scenario.orders:
            yield WorkOrder(next(numbers), order.planned)


def draw_cycle(rng: random.Random, scenario: Scenario) -> tuple[float, bool]:
    """One cycle: (duration in seconds, scrapped?). Always two draws, so runs stay aligned."""
    duration = scenario.cycle_s + rng.uniform(-scenario.cycle_jitter_s, scenario.cycle_jitter_s)
    scrapped = rng.random() < scenario.scrap_rate
    return duration, scrapped


async def _sleep_until(deadline: float, stop: asyncio.Event | None) -> bool:
    """Wait for a loop.time() deadline; True if `stop` was set first (or already)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, deadline - loop.time()))
    except TimeoutError:
        return stop.is_set()
    return True


async def run(
    device: Device,
    scenario: Scenario,
    stop: asyncio.Event | None = None,
    *,
    on_event: Callable[[CycleEvent], None] | None = None,
) -> GroundTruth:
    """Drive `device` through the plan in real time and return what happened.

    Per order: set_order → changeover → busy 1 → cycles (one good or scrap each) until
    good == planned → busy 0. Setting `stop` ends the run at once; the truth then covers exactly
    the steps done (a cycle in progress when stopped counts nothing). `on_event` sees each log
    entry as it happens (the CLI prints them).
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(scenario.seed)
    truth = GroundTruth()
    t0 = loop.time()
    counters = [device.good, device.scrap]  # raw device counters after the last step

    def record(step: Step, order: WorkOrder, good: int, scrap: int) -> None:
        ev = CycleEvent(
            step, order.number, order.planned, good, scrap, counters[0], counters[1],
            round(loop.time() - t0, 4),
        )
        truth.events.append(ev)
        if on_event is not None:
            on_event(ev)

    # Deadlines advance by the planned durations, not from "now", so timing does not drift.
    deadline = t0
    for order in iter_orders(scenario):
        if stop is not None and stop.is_set():
            truth.stopped = True
            return truth
        device.set_order(order.number, order.planned)
        record(Step.ORDER, order, 0, 0)
        deadline += scenario.changeover_s
        if await _sleep_until(deadline, stop):
            truth.stopped = True
            return truth
        device.set_busy(True)
        record(Step.START, order, 0, 0)
        good = scrap = 0
        while good < order.planned:
            duration, scrapped = draw_cycle(rng, scenario)
            deadline += duration
            if await _sleep_until(deadline, stop):
                truth.stopped = True
                return truth
            if scrapped:
                counters[1] = device.count_scrap()
                scrap += 1
                record(Step.SCRAP, order, good, scrap)
            else:
                counters[0] = device.count_good()
                good += 1
                record(Step.GOOD, order, good, scrap)
        device.set_busy(False)
        record(Step.END, order, good, scrap)
    return truth
