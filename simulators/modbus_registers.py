"""A richer Modbus device: many registers, holes, delays, RTU on a serial line, and a CLI fleet.

`RegisterDevice` is a `PressDevice` (same press map at hr:0..5 / co:0, so the scenario drives
it and knows the ground truth) with many more registers behind it:

- holding and input registers 0..`registers`-1, coils and discrete inputs 0..`bits`-1;
- `holes`: holding/input register addresses that do not exist (a read touching one is
  answered with exception code 2, "illegal data address", like a real PLC's unmapped gap);
- `words[address]`: raw 16-bit values tests set (types, byte and word orders), for the
  holding and input tables alike (addresses 0..5 are the press's and are overwritten);
- `requests` / `request_log`: every read request received, including those answered with an
  exception (from the server's PDU trace, so tests count the gateway's requests exactly);
- the press's fault switches: `stop()`/`start()`, `fail_with`, `response_delay_s`.

`start_serial(path)` serves the same device as Modbus RTU on a serial device (for tests, one
end of a `NullModem`).

Command line (a fleet for benchmarks, in its own process):
`python -m simulators.modbus_registers --devices 20 --registers 500 [--tick 1s]`
prints `{"ports": [...]}` first, then serves until SIGINT/SIGTERM; `--tick` changes every
register's value each period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Iterable

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from simulators.modbus_device import PressDevice

_FC_BITS = frozenset({1, 2, 5, 15})
_FC_READS = frozenset({1, 2, 3, 4})


class _LineCore(SimCore):
    """The units of one serial line: a request for an absent unit gets no answer at all.

    pymodbus' SimCore answers an unknown unit id with "server device failure"; on a real
    RS-485 line nobody answers, and the master times out.
    """

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if device_id not in self.devices:
            raise NoSuchIdException(f"no unit {device_id} on this line")
        return await super().async_getValues(device_id, func_code, address, count)


class RegisterDevice(PressDevice):
    """A press station with a large register map (see the module docstring)."""

    def __init__(self, *, unit_id: int = 1, registers: int = 1000, bits: int = 64,
                 holes: Iterable[int] = (), good: int = 0, scrap: int = 0) -> None:
        super().__init__(unit_id=unit_id, good=good, scrap=scrap)
        if registers < 6:
            raise ValueError("registers must be >= 6 (the press map needs hr:0..5)")
        self.registers = registers
        self.bits = max(16, (bits + 15) // 16 * 16)
        self.holes = frozenset(holes)
        if any(h < 6 for h in self.holes):
            raise ValueError("holes must be >= 6 (the press map needs hr:0..5)")
        #: Raw register values by address (holding and input tables both read these).
        self.words: list[int] = [0] * registers
        #: Bit values by address (coils and discrete inputs both read these; co:0 is busy).
        self.bit_values: list[bool] = [False] * self.bits
        #: Read requests received (answered or refused), and the first 10,000 of them by
        #: (function code, address, count).
        self.requests = 0
        self.request_log: list[tuple[int, int, int]] = []
        self._serial: ModbusSerialServer | None = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.function_code in _FC_READS:
            self.requests += 1
            if len(self.request_log) < 10_000:  # the first ones, for tests; then only counted
                self.request_log.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    def _blocks(self) -> list[SimData]:
        blocks, start = [], 0
        for address in [*sorted(self.holes), self.registers]:
            if address > start:
                blocks.append(SimData(start, values=[0] * (address - start),
                                      datatype=DataType.REGISTERS, readonly=True))
            start = address + 1
        return blocks

    def _sim_device(self) -> SimDevice:
        return SimDevice(
            id=self.unit_id,
            simdata=(
                [SimData(0, values=[False] * self.bits, datatype=DataType.BITS, readonly=True)],
                [SimData(0, values=[False] * self.bits, datatype=DataType.BITS, readonly=True)],
                self._blocks(),
                self._blocks(),
            ),
            action=self._on_request,
            use_bit_addressing=True,  # co:N is bit N % 16 of bit register N // 16
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP (as `PressDevice.start`), counting every request."""
        if self._server is not None:
            raise RuntimeError("device already running")
        server = ModbusTcpServer(self._sim_device(), address=(host, port), trace_pdu=self._trace)
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if not sockets:
            await server.shutdown()
            raise RuntimeError(f"device could not listen on {host}:{port}")
        self._server = server
        self._host = host
        self._port = int(sockets[0].getsockname()[1])
        return self._port

    async def start_serial(self, path: str, *, baudrate: int = 19200, parity: str = "E",
                           devices: Iterable[RegisterDevice] = ()) -> None:
        """Serve as Modbus RTU on the serial device `path` (with other units on the same line)."""
        units = [self._sim_device(), *(d._sim_device() for d in devices)]
        server = ModbusSerialServer(units, framer=FramerType.RTU, port=path,
                                    baudrate=baudrate, parity=parity, trace_pdu=self._trace,
                                    ignore_missing_devices=True)  # silent, like a real line
        server.context = _LineCore(units)
        await server.serve_forever(background=True)
        self._serial = server

    async def stop(self) -> None:
        await super().stop()
        serial, self._serial = self._serial, None
        if serial is not None:
            await serial.shutdown()
            await asyncio.sleep(0)

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS
        self.read_requests += 1
        if self.response_delay_s > 0:
            await asyncio.sleep(self.response_delay_s)
        if self.fail_with is not None:
            return self.fail_with
        if function_code in _FC_BITS:
            # Bits are stored 16 to a register, bit 0 first; for bit requests pymodbus passes
            # `count` in registers, not bits.
            first = address // 16
            bits = self.bit_values
            bits[0] = self.busy
            for reg in range(first, min(first + count, len(bits) // 16)):
                word = 0
                for b in range(16):
                    if bits[reg * 16 + b]:
                        word |= 1 << b
                registers[reg - start_address] = word
        else:
            image = self.holding_registers()
            self.words[0 : len(image)] = image
            registers[address - start_address : address - start_address + count] = (
                self.words[address : address + count])
        return None

    def tick(self) -> None:
        """Change every register above the press map (benchmarks: values that move)."""
        words = self.words
        for i in range(6, len(words)):
            words[i] = (words[i] + 1) & 0xFFFF


# --- command line --------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    devices = [RegisterDevice(registers=max(args.registers, 6)) for _ in range(args.devices)]
    ports = [await d.start(args.host, 0) for d in devices]
    print(json.dumps({"ports": ports, "host": args.host}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.tick)
            for d in devices:
                d.tick()
    finally:
        for d in devices:
            await d.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m simulators.modbus_registers`."""
    parser = argparse.ArgumentParser(description="A fleet of Modbus TCP register devices")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--registers", type=int, default=500)
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between value changes")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
