"""Modbus RTU with even parity (the Modbus serial default, 8E1).

Not over the pty null modem of the other RTU tests: this box's kernel refuses a pty with
parity on (pyserial's reconfigure gets EINVAL from tcsetattr), and a pty would carry no
parity bit anyway. So both ends are pyserial `socket://` ports (serial over TCP, as through a
serial device server): the simulator serves RTU frames there (pymodbus listens on the TCP
port), and the driver's `SerialBus` opens it with the settings under test. This checks that
8E1 at 9600 baud reaches the port as configured and that RTU framing decodes every type; a
real parity mismatch can only show on a real line.
"""

from __future__ import annotations

import socket
import struct

import pytest
from edgekit import Collector, arun, config, good_values, put

from drivers.base import DriverCounters
from drivers.modbus import ModbusDriver, ModbusSignal
from drivers.modbus_link import SerialBus, rtu_frame_gap_s
from simulators.modbus_registers import RegisterDevice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rtu_with_even_parity_reads_every_type_with_the_minimal_requests() -> None:
    async def body() -> tuple[dict[str, object], tuple[str, int, float, str], RegisterDevice,
                              DriverCounters]:
        url = f"socket://127.0.0.1:{_free_port()}"
        device = RegisterDevice(registers=80, bits=32, unit_id=7)
        put(device, 20, ">f", 21.5)
        put(device, 22, ">i", -40000)
        device.words[22], device.words[23] = device.words[23], device.words[22]  # LE words
        device.words[30:33] = struct.unpack(">3H", b"OP30\0\0")
        device.words[40] = 0x8001
        device.bit_values[9] = True
        await device.start_serial(url, baudrate=9600, parity="E")
        bus = SerialBus(url, baudrate=9600, parity="E", stopbits=1, timeout_s=0.5)
        assert bus.frame_gap_s == rtu_frame_gap_s(9600) == pytest.approx(3.5 * 11 / 9600)
        signals = (
            ModbusSignal("f", "hr:20", "float32", 0.05),
            ModbusSignal("i", "hr:22", "int32", 0.05, word_order="little"),
            ModbusSignal("s", "hr:30", "string(6)", 0.05),
            ModbusSignal("hi", "hr:40.15", "bool", 0.05),
            ModbusSignal("lo", "hr:40.0", "bool", 0.05),
            ModbusSignal("raw", "hr:40", "int16", 0.05),
            ModbusSignal("c", "co:9", "bool", 0.05),
        )
        driver = ModbusDriver(config("rtu-7", 1, *signals, host=url, unit=7, timeout_s=0.5),
                              link=bus)
        col = Collector(driver)
        try:
            want = {"f": 21.5, "i": -40000, "s": "OP30", "hi": True, "lo": True,
                    "raw": -32767, "c": True}
            await col.wait_for(lambda s: want.items() <= good_values(s).items())
            await col.wait_for(lambda s: len(driver.cycle_ms) >= 3)
            client = bus.ready()
            assert client is not None
            port = client.ctx.transport.sync_serial  # type: ignore[union-attr]
            opened = (port.parity, port.baudrate, port.stopbits, client.comm_params.parity)
            counters = driver.counters()  # while polling: no request cut short by close
        finally:
            await col.close()
            await device.stop()
        return good_values(col.samples), opened, device, counters

    values, opened, device, counters = arun(body, timeout=20)
    assert opened == ("E", 9600, 1, "E")
    assert values["f"] == 21.5 and values["s"] == "OP30"
    # hr:20..40 is one read (gaps of at most 8), co:9 another: two requests a cycle.
    assert device.request_log[:4] == [(3, 20, 21), (1, 9, 1)] * 2
    assert counters.errors == {} and counters.bad_samples == 0 and counters.requests >= 6
