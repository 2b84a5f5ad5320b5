"""The Modbus press simulator, its scenario ground truth, and the polling driver against it.

Real sockets on 127.0.0.1, free ports; waits are bounded polls on what the driver yields.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from edgekit import Collector, arun, good_values
from pymodbus.constants import ExcCodes

from drivers.base import ConfigError, Driver, Quality, Sample
from drivers.modbus import (
    ModbusDeviceConfig,
    ModbusDriver,
    ModbusSignal,
    Table,
    compile_plan,
)
from simulators.modbus_device import PressDevice
from simulators.scenario import (
    COMPLETED,
    PROGRESS,
    SCRAPPED,
    STARTED,
    CycleEvent,
    Expected,
    GroundTruth,
    Scenario,
    Step,
    WorkOrder,
    draw_cycle,
    expected_packets,
    iter_orders,
    run,
)

ROOT = Path(__file__).resolve().parents[2]

PRESS_SIGNALS = (
    ModbusSignal("press.busy", "co:0", "bool", 0.02),
    ModbusSignal("press.good", "hr:0", "uint32", 0.02),
    ModbusSignal("press.scrap", "hr:2", "uint16", 0.02),
    ModbusSignal("press.order", "hr:3", "uint32", 0.02),
    ModbusSignal("press.planned", "hr:5", "uint16", 0.02),
)


def press_config(port: int, *signals: ModbusSignal, timeout_s: float = 0.5) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        name="press-1",
        host="127.0.0.1",
        port=port,
        timeout_s=timeout_s,
        signals=signals or PRESS_SIGNALS,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )


# --- simulator + driver: decoding -----------------------------------------------------------


def test_device_values_decode_through_driver_including_32bit_rollover() -> None:
    async def body() -> None:
        device = PressDevice(good=2**32 - 2, scrap=2**16 - 1)
        port = await device.start()
        try:
            device.set_order(70_000, 25)  # > 65535: needs both words of hr:3
            device.set_busy(True)
            driver = ModbusDriver(
                press_config(
                    port,
                    *PRESS_SIGNALS,
                    ModbusSignal("mirror.busy", "di:0", "bool", 0.02),
                    ModbusSignal("mirror.good", "ir:0", "int32", 0.02),
                    ModbusSignal("mirror.good_low", "ir:1", "int16", 0.02),
                )
            )
            assert isinstance(driver, Driver)
            col = Collector(driver)
            first = {
                "press.busy": True,
                "press.good": 2**32 - 2,
                "press.scrap": 2**16 - 1,
                "press.order": 70_000,
                "press.planned": 25,
                "mirror.busy": True,
                "mirror.good": -2,
                "mirror.good_low": -2,
            }
            await col.wait_for(lambda s: good_values(s) == first)

            device.count_good()
            device.count_good()  # 2**32 - 2 -> 2**32 - 1 -> 0
            device.count_scrap()  # 2**16 - 1 -> 0
            device.set_busy(False)
            after = {
                **first,
                "press.busy": False,
                "press.good": 0,
                "press.scrap": 0,
                "mirror.busy": False,
                "mirror.good": 0,
                "mirror.good_low": 0,
            }
            await col.wait_for(lambda s: good_values(s) == after)
            assert all(s.quality is Quality.GOOD for s in col.samples)
            await col.close()
            assert driver.read_errors == 0
            # One merged read for hr:0..5 plus ir, co, di: 4 requests per poll.
            assert driver.reads == device.read_requests
        finally:
            await device.stop()

    arun(body)


# --- scenario through the driver --------------------------------------------------------------


def reconstruct_steps(samples: list[Sample]) -> list[tuple[Step, int, int]]:
    """Counter changes seen in the samples, each required to be exactly one increment."""
    steps: list[tuple[Step, int, int]] = []
    good: int | None = None
    scrap: int | None = None
    # hr:0..5 is one read, so good and scrap of one poll share the same monotonic time.
    polls: dict[float, dict[str, object]] = {}
    for s in samples:
        if s.quality is Quality.GOOD and s.signal in ("press.good", "press.scrap"):
            polls.setdefault(s.monotonic, {})[s.signal] = s.value
    for _, values in sorted(polls.items()):
        new_good, new_scrap = values["press.good"], values["press.scrap"]
        assert isinstance(new_good, int) and isinstance(new_scrap, int)
        if good is not None and scrap is not None:
            d_good = (new_good - good) % 2**32
            d_scrap = (new_scrap - scrap) % 2**16
            assert (d_good, d_scrap) in ((0, 0), (1, 0), (0, 1)), "merged steps"
            if d_good:
                steps.append((Step.GOOD, new_good, new_scrap))
            elif d_scrap:
                steps.append((Step.SCRAP, new_good, new_scrap))
        good, scrap = new_good, new_scrap
    return steps


def test_driver_sees_every_counter_increment_of_a_scenario() -> None:
    scenario = Scenario(
        orders=(WorkOrder(1001, 4), WorkOrder(1002, 3), WorkOrder(1003, 5)),
        changeover_s=0.15,
        scrap_rate=0.25,
        seed=7,
    )

    async def body() -> tuple[GroundTruth, list[Sample]]:
        device = PressDevice(good=2**32 - 5, scrap=2**16 - 2)  # both counters roll over
        port = await device.start()
        try:
            col = Collector(ModbusDriver(press_config(port)))
            await col.wait_for(lambda s: len(good_values(s)) == len(PRESS_SIGNALS))
            truth = await run(device, scenario)
            final = {"press.good": device.good, "press.scrap": device.scrap, "press.busy": False}
            await col.wait_for(lambda s: good_values(s).items() >= final.items())
            await col.close()
            return truth, col.samples
        finally:
            await device.stop()

    truth, samples = arun(body)
    cycles = truth.cycles()
    assert sum(e.step is Step.SCRAP for e in cycles) >= 1, "seed should give some scrap"
    assert reconstruct_steps(samples) == [(e.step, e.counter_good, e.counter_scrap) for e in cycles]
    assert not any(s.quality is Quality.BAD for s in samples)


# --- ground truth rules (no I/O) ---------------------------------------------------------------


def test_expected_packets_follow_the_rules_for_a_hand_made_log() -> None:
    def ev(step: Step, order: int, planned: int, good: int, scrap: int) -> CycleEvent:
        return CycleEvent(step, order, planned, good, scrap, 0, 0, 0.0)

    log = [
        ev(Step.ORDER, 7, 6, 0, 0),
        ev(Step.START, 7, 6, 0, 0),
        *(ev(Step.GOOD, 7, 6, g, 0) for g in (1, 2)),
        ev(Step.SCRAP, 7, 6, 2, 1),
        *(ev(Step.GOOD, 7, 6, g, 1) for g in (3, 4, 5, 6)),
        ev(Step.END, 7, 6, 6, 1),
        ev(Step.ORDER, 8, 4, 0, 0),
        ev(Step.START, 8, 4, 0, 0),
        *(ev(Step.GOOD, 8, 4, g, 0) for g in (1, 2, 3)),
        ev(Step.SCRAP, 8, 4, 3, 1),
        ev(Step.SCRAP, 8, 4, 3, 2),
        ev(Step.GOOD, 8, 4, 4, 2),  # 4 == planned and a multiple of 2: completed only
        ev(Step.END, 8, 4, 4, 2),
    ]
    assert expected_packets(log, operation="OP10", progress_every=2) == [
        Expected(STARTED, "WO-7", "OP10", 0, 0, 6),
        Expected(PROGRESS, "WO-7", "OP10", 2, 0, 6),
        Expected(SCRAPPED, "WO-7", "OP10", 2, 1, 6),
        Expected(PROGRESS, "WO-7", "OP10", 4, 1, 6),
        Expected(COMPLETED, "WO-7", "OP10", 6, 1, 6),
        Expected(STARTED, "WO-8", "OP10", 0, 0, 4),
        Expected(PROGRESS, "WO-8", "OP10", 2, 0, 4),
        Expected(SCRAPPED, "WO-8", "OP10", 3, 1, 4),
        Expected(SCRAPPED, "WO-8", "OP10", 3, 2, 4),
        Expected(COMPLETED, "WO-8", "OP10", 4, 2, 4),
    ]
    truth = GroundTruth(events=log)
    assert truth.expected(operation="OP10", progress_every=2) == expected_packets(
        log, operation="OP10", progress_every=2
    )
    with pytest.raises(ValueError):
        expected_packets(log, operation="OP10", progress_every=0)


class FakeDevice:
    """The runner's view of a device, without a server."""

    def __init__(self) -> None:
        self.good = 2**32 - 1
        self.scrap = 0
        self.calls: list[tuple[str, object]] = []

    def set_order(self, number: int, planned: int) -> None:
        self.calls.append(("order", (number, planned)))

    def set_busy(self, busy: bool) -> None:
        self.calls.append(("busy", busy))

    def count_good(self) -> int:
        self.good = (self.good + 1) % 2**32
        return self.good

    def count_scrap(self) -> int:
        self.scrap = (self.scrap + 1) % 2**16
        return self.scrap


FAST = Scenario(cycle_s=0.001, cycle_jitter_s=0.0005, changeover_s=0.0, seed=3)


def test_scenario_is_deterministic_for_a_seed_and_follows_the_sequence() -> None:
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert [draw_cycle(rng_a, Scenario()) for _ in range(50)] == [
        draw_cycle(rng_b, Scenario()) for _ in range(50)
    ]

    def strip(truth: GroundTruth) -> list[tuple[object, ...]]:
        return [(e.step, e.order, e.good, e.scrap, e.counter_good) for e in truth.events]

    first = asyncio.run(run(FakeDevice(), FAST))
    second = asyncio.run(run(FakeDevice(), FAST))
    assert strip(first) == strip(second)
    other = asyncio.run(run(FakeDevice(), replace(FAST, seed=4)))
    assert strip(other) != strip(first)

    # Per order: order set, busy up, good == planned at the end, busy down.
    by_order = [e for e in first.events if e.step in (Step.ORDER, Step.START, Step.END)]
    assert [(e.step, e.order) for e in by_order] == [
        (s, o.number) for o in FAST.orders for s in (Step.ORDER, Step.START, Step.END)
    ]
    for order in FAST.orders:
        end = next(e for e in first.events if e.step is Step.END and e.order == order.number)
        assert end.good == order.planned
    packets = first.expected(operation="OP10")
    assert [p.type for p in packets].count(COMPLETED) == 3
    assert [p.type for p in packets].count(SCRAPPED) == sum(
        e.step is Step.SCRAP for e in first.events
    )


def test_scenario_stops_at_once_and_truth_covers_exactly_what_happened() -> None:
    async def body() -> tuple[GroundTruth, FakeDevice]:
        device = FakeDevice()
        stop = asyncio.Event()

        def on_event(event: CycleEvent) -> None:
            if event.step is Step.GOOD and event.order == 1002 and event.good == 3:
                stop.set()

        truth = await run(device, replace(FAST, loop=True), stop, on_event=on_event)
        return truth, device

    truth, device = arun(body)
    assert truth.stopped
    last = truth.events[-1]
    assert (last.step, last.order, last.good) == (Step.GOOD, 1002, 3)
    assert last.counter_good == device.good
    types = [p.type for p in truth.expected(operation="OP10")]
    assert types.count(COMPLETED) == 1 and types.count(STARTED) == 2


def test_loop_plan_continues_with_new_order_numbers() -> None:
    orders = iter_orders(Scenario(loop=True))
    numbers = [next(orders).number for _ in range(7)]
    assert numbers == [1001, 1002, 1003, 1004, 1005, 1006, 1007]
    assert [o.number for o in iter_orders(Scenario())] == [1001, 1002, 1003]


# --- faults -----------------------------------------------------------------------------------


def test_device_stop_gives_bad_samples_and_restart_recovers_same_driver() -> None:
    async def body() -> None:
        device = PressDevice(good=41)
        port = await device.start()
        driver = ModbusDriver(press_config(port))
        col = Collector(driver)
        try:
            await col.wait_for(lambda s: good_values(s).get("press.good") == 41)

            await device.stop()
            names = {s.name for s in PRESS_SIGNALS}
            await col.wait_for(lambda s: {x.signal for x in s if x.quality is Quality.BAD} == names)
            bad = [s for s in col.samples if s.quality is Quality.BAD]
            assert len(bad) == len(names), "one BAD sample per signal, then quiet"
            assert all(s.value is None for s in bad)
            assert all(s.reason and s.reason.startswith("comm_") for s in bad)
            assert all(s.reason and f"127.0.0.1:{port}" in s.reason for s in bad)

            device.count_good()
            seen = len(col.samples)
            await device.start(port=port)
            await col.wait_for(
                lambda s: any(
                    x.signal == "press.good" and x.value == 42 and x.good for x in s[seen:]
                )
            )
            assert driver.reconnects == 1
            assert driver.read_errors >= 1
            assert len([s for s in col.samples if s.quality is Quality.BAD]) == len(names)
        finally:
            await col.close()
            await device.stop()

    arun(body)


def test_modbus_exception_response_gives_bad_samples_for_affected_signals_only() -> None:
    async def body() -> None:
        device = PressDevice()
        port = await device.start()
        signals = (*PRESS_SIGNALS, ModbusSignal("press.missing", "hr:100", "uint16", 0.02))
        col = Collector(ModbusDriver(press_config(port, *signals)))
        try:
            await col.wait_for(lambda s: len(good_values(s)) == len(PRESS_SIGNALS))
            missing = col.latest("press.missing")
            assert missing is not None and missing.quality is Quality.BAD
            assert missing.reason is not None
            assert "illegal data address" in missing.reason and "hr:100" in missing.reason

            device.fail_with = ExcCodes.DEVICE_BUSY
            await col.wait_for(
                lambda s: any(x.signal == "press.good" and not x.good for x in s)
            )
            busy = col.latest("press.good")
            assert busy is not None and busy.reason is not None
            assert busy.reason.startswith("modbus_exception: server device busy (code 6)")

            device.fail_with = None
            seen = len(col.samples)
            await col.wait_for(lambda s: any(x.signal == "press.good" and x.good for x in s[seen:]))
        finally:
            await col.close()
            await device.stop()

    arun(body)


def test_slow_device_gives_timeout_then_recovers() -> None:
    async def body() -> None:
        device = PressDevice(good=5)
        port = await device.start()
        driver = ModbusDriver(press_config(port, timeout_s=0.2))
        col = Collector(driver)
        try:
            await col.wait_for(lambda s: good_values(s).get("press.good") == 5)
            device.response_delay_s = 1.0
            await col.wait_for(lambda s: any(not x.good for x in s))
            bad = next(x for x in col.samples if not x.good)
            assert bad.reason is not None
            assert bad.reason.startswith(
                f"comm_timeout: no answer from 127.0.0.1:{port} (unit 1) within")
            device.response_delay_s = 0.0
            device.count_good()
            await col.wait_for(lambda s: good_values(s).get("press.good") == 6)
            assert driver.reconnects >= 1
        finally:
            await col.close()
            await device.stop()

    arun(body)


def test_a_wrong_unit_id_is_named_with_a_hint() -> None:
    async def body() -> None:
        device = PressDevice(unit_id=1)  # answers any other unit with exception 4
        port = await device.start()
        cfg = replace(press_config(port, timeout_s=0.2), unit_id=9)
        col = Collector(ModbusDriver(cfg))
        try:
            await col.wait_for(lambda s: len(s) >= len(PRESS_SIGNALS))
        finally:
            await col.close()
            await device.stop()
        assert not any(x.good for x in col.samples)
        reasons = {x.reason for x in col.samples}
        assert reasons == {f"modbus_exception: server device failure (code 4) reading {ref} "
                           "from unit 9; check that 9 is the device's unit id"
                           for ref in ("hr:0+6", "co:0+1")}

    arun(body)


def test_no_sample_after_close_returns() -> None:
    async def body() -> None:
        device = PressDevice()
        port = await device.start()
        col = Collector(ModbusDriver(press_config(port)))
        try:
            await col.wait_for(lambda s: len(s) >= 10)
            await col.driver.close()
            count = len(col.samples)
            await asyncio.wait_for(col.task, 2.0)
            assert len(col.samples) == count
        finally:
            await device.stop()

    arun(body)


def test_late_cycles_are_skipped_and_counted_not_burst() -> None:
    async def body() -> None:
        device = PressDevice()
        port = await device.start()
        only_good = ModbusSignal("press.good", "hr:0", "uint32", 0.02)
        driver = ModbusDriver(press_config(port, only_good))
        try:
            stream = driver.samples()
            await anext(stream)
            await asyncio.sleep(0.2)  # a slow consumer: about ten cycles are due meanwhile
            await anext(stream)
            times = [(await anext(stream)).monotonic for _ in range(3)]
            assert driver.overruns >= 5
            # After the stall the schedule holds its period instead of catching up.
            assert min(b - a for a, b in itertools.pairwise(times)) > 0.01
        finally:
            await driver.close()
            await device.stop()

    arun(body)


# --- the simulator as a command-line tool ----------------------------------------------------


def test_simulator_cli_serves_and_prints_ground_truth() -> None:
    async def body() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulators.modbus_device", "--port", "0", "--seed", "2",
            "--good", str(2**32 - 1),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 5.0))
            port = int(hello["listening"].rsplit(":", 1)[1])
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 5.0))
            assert (first["step"], first["order"], first["planned"]) == ("order", 1001, 20)
            col = Collector(ModbusDriver(press_config(port)))
            await col.wait_for(lambda s: good_values(s).get("press.order") == 1001)
            await col.close()
        finally:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 5.0) == 0

    arun(body)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "fragment"),
    [
        (ModbusSignal("press.good", "hx:1", "uint16"), "address 'hx:1': expected hr:N, ir:N"),
        (ModbusSignal("press.good", "hr:70000", "uint16"), "address 'hr:70000'"),
        (ModbusSignal("press.good", "hr:65535", "uint32"), "N + width"),
        (ModbusSignal("press.good", "hr:1", "float16"), "type 'float16': expected one of"),
        (ModbusSignal("press.good", "co:1", "uint16"), "expected bool for co:N"),
        (ModbusSignal("press.good", "hr:1", "bool"), "type 'bool'"),
        (ModbusSignal("press.good", "hr:1", "uint16", 0.0), "interval_s 0.0"),
    ],
)
def test_bad_address_or_type_is_a_config_error_naming_the_signal(
    signal: ModbusSignal, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        ModbusDriver(press_config(502, signal))
    assert "signal 'press.good'" in str(info.value)
    assert fragment in str(info.value)


def test_duplicate_signal_is_a_config_error() -> None:
    twice = (ModbusSignal("a", "hr:0"), ModbusSignal("a", "hr:1"))
    with pytest.raises(ConfigError, match="signal 'a': defined twice"):
        compile_plan(twice)


def test_plan_merges_near_addresses_per_interval_and_table_within_limits() -> None:
    signals = [
        ModbusSignal("a", "hr:0", "uint32", 1.0),
        ModbusSignal("b", "hr:5", "uint16", 1.0),  # gap 3 <= max_gap: merged
        ModbusSignal("c", "hr:20", "uint16", 1.0),  # gap 14 > max_gap: new read
        ModbusSignal("d", "ir:5", "int16", 1.0),  # other table
        ModbusSignal("e", "hr:1", "uint16", 0.5),  # other interval
        ModbusSignal("f", "co:0", "bool", 1.0),
        ModbusSignal("g", "co:3", "bool", 1.0),
        *(ModbusSignal(f"r{i}", f"hr:{100 + i}", "uint16", 2.0) for i in range(126)),
    ]
    plan = compile_plan(signals, max_gap=8)
    assert [g.interval_s for g in plan] == [0.5, 1.0, 2.0]
    fast, normal, slow = plan
    assert [(r.table, r.start, r.count) for r in fast.reads] == [(Table.HOLDING, 1, 1)]
    assert [(r.table, r.start, r.count) for r in normal.reads] == [
        (Table.HOLDING, 0, 6),
        (Table.HOLDING, 20, 1),
        (Table.INPUT, 5, 1),
        (Table.COIL, 0, 4),
    ]
    assert [(r.start, r.count) for r in slow.reads] == [(100, 125), (225, 1)]
    assert {p.signal for r in normal.reads for p in r.points} == set("abcdfg")

    bits = [
        ModbusSignal("f", "di:0", "bool"),
        ModbusSignal("g", "di:1999", "bool"),  # 2000 bits: still one read
        ModbusSignal("h", "di:2000", "bool"),  # the 2001st bit needs a new read
    ]
    (group,) = compile_plan(bits, max_gap=5000)
    assert [(r.start, r.count) for r in group.reads] == [(0, 2000), (2000, 1)]
