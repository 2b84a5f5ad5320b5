"""A press station as a real Modbus TCP server (pymodbus 3.16), for tests and demos.

Register map (unit id 1 by default; the example mapping YAML relies on these addresses):

| address | table, FC    | type                 | meaning                                         |
|---------|--------------|----------------------|-------------------------------------------------|
| `co:0`  | coil, 1      | bool                 | busy: 1 while the press produces an order       |
| `hr:0`  | holding, 3   | uint32 (hr0 = high)  | good-part counter, rolls over at 2**32          |
| `hr:2`  | holding, 3   | uint16               | scrap counter, rolls over at 2**16              |
| `hr:3`  | holding, 3   | uint32 (hr3 = high)  | work order number (1001 = "WO-1001"), 0 = none  |
| `hr:5`  | holding, 3   | uint16               | planned quantity of the current order           |

Mirrors, so that every read function can be tested against one device: `di:0` mirrors the busy
coil (FC2) and input registers `ir:0`..`ir:5` mirror holding registers 0..5 (FC4). Coils 1-15,
discrete inputs 1-15 and registers 6-15 exist and read 0; addresses beyond answer with the
Modbus exception "illegal data address". The device is read-only from the bus: writes are
refused with "illegal data address" (the press, not the gateway, owns these values).

The values live in plain Python fields of `PressDevice`; a pymodbus request hook copies them
into the server's register image on every read, so the state survives a stop/start of the
server (the fault switch that cuts connections) and the scenario runner needs no pymodbus
knowledge.

Command line: `python -m simulators.modbus_device --port 5020 [--seed N] [--loop] [--host H]
[--unit U] [--good N] [--scrap N]` serves the device (127.0.0.1 by default; `--port 0` picks a
free port) and runs the default scenario. Its first stdout line is
`{"listening": "host:port", "unit_id": 1}`, then one JSON line per ground-truth cycle event.
SIGINT/SIGTERM stop it cleanly; without `--loop` it keeps serving the final state after the plan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import asdict

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.scenario import CycleEvent, Scenario, run

DEFAULT_UNIT_ID = 1

# Sizes of the simulated tables; the rest of the address space answers "illegal address".
_BITS = 16
_REGISTERS = 16

_FC_BITS = frozenset({1, 2, 5, 15})


class PressDevice:
    """One press station: its counters and order context, served over Modbus TCP.

    The scenario runner calls the plain methods (`set_order`, `set_busy`, `count_good`,
    `count_scrap`); tests read `read_requests` and flip the faults (`stop`/`start` on the same
    port, `fail_with` to answer every read with a Modbus exception, `response_delay_s` to answer
    late).
    """

    def __init__(
        self, *, unit_id: int = DEFAULT_UNIT_ID, good: int = 0, scrap: int = 0
    ) -> None:
        self.unit_id = unit_id
        self._good = good % 2**32
        self._scrap = scrap % 2**16
        self._order = 0
        self._planned = 0
        self._busy = False
        #: Read requests answered (including those answered with `fail_with`).
        self.read_requests = 0
        #: When set, every read is answered with this Modbus exception code (fault injection).
        self.fail_with: ExcCodes | None = None
        #: Seconds to hold every read before answering (fault injection: a slow or hung PLC).
        self.response_delay_s = 0.0
        self._server: ModbusTcpServer | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # --- state the scenario drives -------------------------------------------------------

    @property
    def good(self) -> int:
        """The raw 32-bit good-part counter."""
        return self._good

    @property
    def scrap(self) -> int:
        """The raw 16-bit scrap counter."""
        return self._scrap

    @property
    def order(self) -> int:
        """The current work order number (0 = none)."""
        return self._order

    @property
    def planned(self) -> int:
        """The planned quantity of the current order."""
        return self._planned

    @property
    def busy(self) -> bool:
        """The busy flag."""
        return self._busy

    def set_order(self, number: int, planned: int) -> None:
        """Set the current work order number (0 clears it) and its planned quantity."""
        if not 0 <= number < 2**32 or not 0 <= planned < 2**16:
            raise ValueError(f"order {number} / planned {planned} outside the register range")
        self._order = number
        self._planned = planned

    def set_busy(self, busy: bool) -> None:
        """Raise or drop the busy coil."""
        self._busy = busy

    def count_good(self) -> int:
        """Count one good part; returns the new raw counter (wraps at 2**32 like the PLC)."""
        self._good = (self._good + 1) % 2**32
        return self._good

    def count_scrap(self) -> int:
        """Count one scrapped part; returns the new raw counter (wraps at 2**16)."""
        self._scrap = (self._scrap + 1) % 2**16
        return self._scrap

    def holding_registers(self) -> list[int]:
        """The register image of holding registers 0..5 as the bus sees it."""
        return [
            self._good >> 16,
            self._good & 0xFFFF,
            self._scrap,
            self._order >> 16,
            self._order & 0xFFFF,
            self._planned,
        ]

    # --- the server ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port bound by the last `start` (0 before the first start)."""
        return self._port

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._server is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host:port` (0 = a free port chosen by the OS); returns the bound port.

        Calling it again after `stop()` with the port it returned restarts the device there,
        with its counters intact.
        """
        if self._server is not None:
            raise RuntimeError("press device already running")
        server = ModbusTcpServer(self._sim_device(), address=(host, port))
        await server.serve_forever(background=True)
        listener = server.transport
        sockets = getattr(listener, "sockets", None)
        if not sockets:
            await server.shutdown()
            raise RuntimeError(f"press device could not listen on {host}:{port}")
        self._server = server
        self._host = host
        self._port = int(sockets[0].getsockname()[1])
        return self._port

    async def stop(self) -> None:
        """Stop listening and cut every client connection (the 'device off' fault)."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()
        # Let the transports run their close callbacks before the port is reused.
        await asyncio.sleep(0)

    def _sim_device(self) -> SimDevice:
        # Separate tables (coils, discrete inputs, holding, input), each bit addressed singly.
        return SimDevice(
            id=self.unit_id,
            simdata=(
                [SimData(0, values=[False] * _BITS, datatype=DataType.BITS, readonly=True)],
                [SimData(0, values=[False] * _BITS, datatype=DataType.BITS, readonly=True)],
                [SimData(0, values=[0] * _REGISTERS, datatype=DataType.REGISTERS, readonly=True)],
                [SimData(0, values=[0] * _REGISTERS, datatype=DataType.REGISTERS, readonly=True)],
            ),
            action=self._on_request,
        )

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called before a valid request is answered: refresh the image."""
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS  # readonly SimData already refuses; belt and braces
        self.read_requests += 1
        if self.response_delay_s > 0:
            await asyncio.sleep(self.response_delay_s)
        if self.fail_with is not None:
            return self.fail_with
        if function_code in _FC_BITS:
            # Bit tables are stored 16 bits per register, bit 0 first; only bit 0 is used.
            registers[0] = (registers[0] & ~1) | int(self._busy)
        else:
            image = self.holding_registers()
            registers[0 : len(image)] = image
        return None


# --- command line --------------------------------------------------------------------------


def _print_event(event: CycleEvent) -> None:
    print(json.dumps(asdict(event), sort_keys=True), flush=True)


async def _serve(host: str, port: int, scenario: Scenario, device: PressDevice) -> None:
    bound = await device.start(host, port)
    print(json.dumps({"listening": f"{host}:{bound}", "unit_id": device.unit_id}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await run(device, scenario, stop, on_event=_print_event)
        await stop.wait()  # plan done (no --loop): keep serving the final state until told
    finally:
        await device.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m simulators.modbus_device`."""
    parser = argparse.ArgumentParser(description="Simulated press station (Modbus TCP)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", action="store_true", help="repeat the plan with new orders")
    parser.add_argument("--unit", type=int, default=DEFAULT_UNIT_ID, help="Modbus unit id")
    parser.add_argument("--good", type=int, default=0, help="initial good counter (rollover)")
    parser.add_argument("--scrap", type=int, default=0, help="initial scrap counter")
    args = parser.parse_args(argv)
    device = PressDevice(unit_id=args.unit, good=args.good, scrap=args.scrap)
    scenario = Scenario(seed=args.seed, loop=args.loop)
    asyncio.run(_serve(args.host, args.port, scenario, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
