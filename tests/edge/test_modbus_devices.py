"""The Modbus driver against the richer register device, over TCP and RTU (a pty null modem).

Requests are counted at the simulator (from the server's PDU trace), so "minimal" and
"split" are checked on what actually crossed the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from collections.abc import Callable

import pytest
from edgekit import Collector, arun, config, good_values, put

import drivers.modbus
from drivers.base import Quality, Sample
from drivers.modbus import ModbusDriver, ModbusSignal
from drivers.modbus_link import SerialBus, rtu_frame_gap_s
from simulators.modbus_registers import RegisterDevice
from simulators.serial_line import NullModem


def test_values_decode_over_the_wire_with_the_minimal_number_of_requests() -> None:
    async def body() -> None:
        device = RegisterDevice(registers=600, bits=3000)
        put(device, 300, ">f", -7.25)
        put(device, 310, ">i", -123456)
        device.words[310], device.words[311] = device.words[311], device.words[310]  # LE words
        put(device, 320, ">Q", 2**63 + 5)
        device.words[330:334] = struct.unpack(">4H", b"AB-12\0\0\0")
        device.words[340] = 1 << 5
        device.bit_values[2500] = True
        port = await device.start()
        signals = [
            *(ModbusSignal(f"r{a}", f"hr:{a}", "uint16", 0.05) for a in range(6, 250)),
            ModbusSignal("f", "ir:300", "float32", 0.05),
            ModbusSignal("i", "ir:310", "int32", 0.05, word_order="little"),
            ModbusSignal("q", "ir:320", "uint64", 0.05),
            ModbusSignal("s", "ir:330", "string(8)", 0.05),
            ModbusSignal("b", "ir:340.5", "bool", 0.05),
            ModbusSignal("t", "ir:341", "uint16", 0.05, scale=0.5, offset=10),
            *(ModbusSignal(f"c{a}", f"co:{a}", "bool", 0.05) for a in range(1, 3000)),
        ]
        driver = ModbusDriver(config("dev", port, *signals))
        col = Collector(driver)
        try:
            expected = {"f": -7.25, "i": -123456, "q": 2**63 + 5, "s": "AB-12", "b": True,
                        "t": 10.0, "c2500": True, "c2499": False, "r100": 0}
            await col.wait_for(lambda s: expected.items() <= good_values(s).items())
            await col.wait_for(lambda s: len(driver.cycle_ms) >= 3)
        finally:
            await col.close()
            await device.stop()
        # hr:6..249 = 244 registers: 2 reads; ir:300..341: 1 read; co:1..2999: 2 reads.
        plan = [(3, 6, 125), (3, 131, 119), (4, 300, 42), (1, 1, 2000), (1, 2001, 999)]
        assert device.request_log[: 3 * len(plan)] == plan * 3
        assert driver.reads == device.requests and driver.read_errors == 0

    arun(body, timeout=20)


def test_a_hole_splits_the_read_and_the_split_is_remembered() -> None:
    async def body() -> None:
        device = RegisterDevice(registers=200, holes=[50, 51])
        for a in range(40, 70):
            device.words[a] = a
        port = await device.start()
        signals = [ModbusSignal(f"r{a}", f"hr:{a}", "uint16", 0.03)
                   for a in range(40, 70) if a not in (50, 51)]
        driver = ModbusDriver(config("dev", port, *signals))
        col = Collector(driver)
        try:
            want = {f"r{a}": a for a in range(40, 70) if a not in (50, 51)}
            await col.wait_for(lambda s: want.items() <= good_values(s).items())
            seen = device.requests
            await col.wait_for(lambda s: device.requests >= seen + 6)
        finally:
            await col.close()
            await device.stop()
        assert device.request_log[0] == (3, 40, 30)  # the merged read, refused
        assert driver.splits == 1
        assert device.request_log[1:3] == [(3, 40, 10), (3, 52, 18)]  # cut at the hole's gap
        assert (3, 40, 30) not in device.request_log[1:], "the split is remembered"
        assert not any(s.quality is Quality.BAD for s in col.samples)

    arun(body)


class SteppedClock:
    """`time` for the driver module, whose wall clock jumps while the test runs."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


def test_a_wall_clock_step_neither_stalls_nor_bursts_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(drivers.modbus, "time", clock)

    async def body() -> list[Sample]:
        device = RegisterDevice(registers=10)
        port = await device.start()
        col = Collector(ModbusDriver(config("dev", port, ModbusSignal("x", "hr:6", "uint16",
                                                                      0.05))))
        try:
            await col.wait_for(lambda s: len(s) >= 5)
            clock.offset = 3600.0  # the box's clock jumps an hour ahead...
            await col.wait_for(lambda s: len(s) >= 10)
            clock.offset = -3600.0  # ...then two hours back
            await col.wait_for(lambda s: len(s) >= 15)
        finally:
            await col.close()
            await device.stop()
        return col.samples

    samples = arun(body)
    walls = [s.time for s in samples]
    assert max(walls) - min(walls) > 7000, "the wall clock did step"
    gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(samples)]
    assert min(gaps) > 0.03, "no burst"
    assert max(gaps) < 0.15, "no stall"


def test_dead_devices_never_slow_a_healthy_one_and_faults_are_named() -> None:
    async def body() -> None:
        healthy, mute = RegisterDevice(registers=10), RegisterDevice(registers=10)
        good_port, mute_port = await healthy.start(), await mute.start()

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # reads the request, never answers
            await asyncio.sleep(30)

        blackhole = await asyncio.start_server(swallow, "127.0.0.1", 0)
        hole_port = blackhole.sockets[0].getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        sig = ModbusSignal("x", "hr:6", "uint16", 0.05)
        cols = {
            name: Collector(ModbusDriver(config(name, port, ModbusSignal(f"{name}.x", "hr:6",
                                                                         "uint16", 0.05))))
            for name, port in (("good", good_port), ("hole", hole_port),
                               ("closed", closed_port), ("mute", mute_port))
        }
        assert sig  # same shape for every device
        try:
            await cols["mute"].wait_for(lambda s: any(x.good for x in s))
            mute.response_delay_s = 5.0  # answered before, now silent: half-open
            await asyncio.sleep(1.5)
        finally:
            for col in cols.values():
                await col.close()
            blackhole.close()
            await healthy.stop()
            await mute.stop()

        good = [s for s in cols["good"].samples if s.good]
        gaps = [b.monotonic - a.monotonic for a, b in itertools.pairwise(good)]
        assert len(good) >= 20 and max(gaps) < 0.15, "the healthy device kept its period"
        assert cols["good"].driver.overruns == 0

        def reason(name: str) -> str:
            bad = [s for s in cols[name].samples if s.quality is Quality.BAD]
            assert len(bad) == 1, f"{name}: one BAD sample, then quiet"
            assert bad[0].reason is not None
            return bad[0].reason

        assert reason("hole").startswith(f"comm_timeout: no answer from 127.0.0.1:{hole_port}")
        assert reason("closed") == (f"comm_lost: connection refused by 127.0.0.1:{closed_port} "
                                    "(or unreachable)")
        assert "may be half-open" in reason("mute")
        assert cols["closed"].driver.read_errors >= 2, "errors are counted while they last"

    arun(body, timeout=20)


def test_rtu_units_share_one_bus_and_a_silent_unit_does_not_stop_the_others() -> None:
    async def body() -> tuple[dict[str, list[Sample]], SerialBus]:
        line = NullModem().start()
        first, second = RegisterDevice(registers=20, unit_id=1), RegisterDevice(registers=20,
                                                                               unit_id=2)
        first.words[7], second.words[7] = 111, 222
        await first.start_serial(line.a, baudrate=19200, parity="N", devices=[second])
        bus = SerialBus(line.b, baudrate=19200, parity="N", timeout_s=0.2)
        cols = {
            unit: Collector(ModbusDriver(
                config(f"unit-{unit}", 1, ModbusSignal(f"u{unit}", "hr:7", "uint16", 0.05),
                       host=line.b, unit=unit, timeout_s=0.2),
                link=bus))
            for unit in (1, 2, 3)  # unit 3 is not on the line
        }
        try:
            def both(s: list[Sample]) -> Callable[[list[Sample]], bool]:
                return lambda s: len([x for x in s if x.good]) >= 10

            await cols[1].wait_for(both([]))
            await cols[2].wait_for(both([]))
            await cols[3].wait_for(lambda s: any(not x.good for x in s))
            first.words[7] = 112
            await cols[1].wait_for(lambda s: good_values(s).get("u1") == 112)
        finally:
            for col in cols.values():
                await col.close()
            await first.stop()
            line.close()
        return {f"u{u}": c.samples for u, c in cols.items()}, bus

    samples, bus = arun(body, timeout=20)
    assert good_values(samples["u2"]) == {"u2": 222}
    silent = samples["u3"]
    assert [s.quality for s in silent] == [Quality.BAD]
    assert silent[0].reason is not None and "no answer from unit 3" in silent[0].reason
    assert bus.frame_gap_s == pytest.approx(rtu_frame_gap_s(19200))
    assert rtu_frame_gap_s(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu_frame_gap_s(115200) == 0.00175
