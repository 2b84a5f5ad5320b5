"""Modbus links: a TCP connection per device, or one RS-485 serial bus shared by its units.

A link owns the pymodbus client, the one `asyncio.Lock` that keeps one request at a time on the
wire, and the reconnect backoff (exponential, with jitter so that many gateways do not reconnect
in step). Drivers hold the lock around `client()` + request, and report failures back with
`failed()`, which decides whether the link itself is at fault (drop it and back off) or only
the request (an RTU unit that did not answer: the bus is fine, the other units keep going).
"""

from __future__ import annotations

import asyncio
import random
import struct

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers.settings import Backoff

# --- register responses -------------------------------------------------------------------------
# pymodbus decodes a register response one `struct` call per register and then formats the
# whole response, values and all, for a debug line it builds whether or not debug is on: about
# a third of the client's CPU for 125 registers. These responses (registered on each client
# through pymodbus' public `register()`) decode in one call and print without the values.

_REGISTER_STRUCTS = tuple(struct.Struct(f">{n}H") for n in range(128))


def unpack_registers(data: bytes, function_code: int) -> list[int]:
    """The registers of a read response's data (byte count, then big-endian words)."""
    size = data[0]
    if size >= len(data) or size % 2:
        raise ModbusIOException(f"byte_count {size} for {len(data) - 1} bytes of registers",
                                function_code=function_code)
    words = size // 2
    layout = _REGISTER_STRUCTS[words] if words < len(_REGISTER_STRUCTS) else struct.Struct(
        f">{words}H")
    return list(layout.unpack_from(data, 1))


class _HoldingRegisters(ReadHoldingRegistersResponse):
    def decode(self, data: bytes) -> None:
        self.registers = unpack_registers(data, self.function_code)

    def __str__(self) -> str:
        return _summary(self)


class _InputRegisters(ReadInputRegistersResponse):
    def decode(self, data: bytes) -> None:
        self.registers = unpack_registers(data, self.function_code)

    def __str__(self) -> str:
        return _summary(self)


def _summary(pdu: ReadHoldingRegistersResponse) -> str:
    return (f"{type(pdu).__bases__[0].__name__}(dev_id={pdu.dev_id}, "
            f"transaction_id={pdu.transaction_id}, registers=<{len(pdu.registers)}>)")


def fast_responses(client: ModbusBaseClient) -> ModbusBaseClient:
    """`client`, decoding register responses with the classes above."""
    client.register(_HoldingRegisters)
    client.register(_InputRegisters)
    return client


class LinkDown(Exception):
    """No usable connection now (refused, lost, or waiting for the backoff); `reason` says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Link:
    """Shared machinery: the lock, the client, the backoff clock and counters."""

    def __init__(self, name: str, timeout_s: float, backoff: Backoff,
                 rng: random.Random | None) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.lock = asyncio.Lock()
        #: Successful connects after the first one.
        self.reconnects = 0
        #: Seconds of the current backoff wait (what a returning device waits for at most).
        self.current_wait_s = 0.0
        self._rng = rng or random.Random()
        self._client: ModbusBaseClient | None = None
        self._delay = backoff.initial_s
        self._next_connect = 0.0
        self._ever_connected = False
        self._fault: str | None = None

    def new_client(self) -> ModbusBaseClient:
        """A new, unconnected client, configured as this link uses it."""
        raise NotImplementedError

    def _refused(self) -> str:
        raise NotImplementedError

    #: Whether `pace()` must be awaited before each request (an RTU bus's frame gap).
    paced = False

    async def pace(self) -> None:
        """Wait whatever the medium needs between frames (nothing on TCP)."""

    def ready(self) -> ModbusBaseClient | None:
        """The client if it is connected now, else None (then `await client()`)."""
        client = self._client
        return client if client is not None and client.connected else None

    def sent(self) -> None:
        """Note that a request/response exchange just ended."""

    async def client(self) -> ModbusBaseClient:
        """The connected client, connecting if the backoff allows; raises LinkDown."""
        if self._client is not None and self._client.connected:
            return self._client
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect:
            raise LinkDown(self._fault or f"comm_lost: not connected to {self.name}")
        self.drop()
        client = self.new_client()
        started = loop.time()
        ok = await client.connect()
        if not ok or not client.connected:
            client.close()
            self._schedule()
            if loop.time() - started >= self.timeout_s * 0.9:
                self._fault = (f"comm_timeout: connect to {self.name} timed out after "
                               f"{self.timeout_s:g}s")
            else:
                self._fault = self._refused()
            raise LinkDown(self._fault)
        self._client = client
        self._delay = self.backoff.initial_s
        self.current_wait_s = 0.0
        self._fault = None
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        return client

    def lost(self, reason: str) -> None:
        """The link failed: drop the connection and wait for the backoff before the next try."""
        self.drop()
        self._fault = reason
        self._schedule()

    def _schedule(self) -> None:
        spread = self.backoff.jitter
        wait = self._delay * (1.0 + self._rng.uniform(-spread, spread))
        self.current_wait_s = wait
        self._next_connect = asyncio.get_running_loop().time() + wait
        self._delay = min(self._delay * 2, self.backoff.max_s)

    def drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class TcpLink(_Link):
    """One Modbus TCP connection (one per device; its own lock and backoff)."""

    def __init__(self, host: str, port: int, *, timeout_s: float, backoff: Backoff,
                 rng: random.Random | None = None) -> None:
        super().__init__(f"{host}:{port}", timeout_s, backoff, rng)
        self.host, self.port = host, port
        self._answered = False

    def new_client(self) -> ModbusBaseClient:
        self._answered = False
        return fast_responses(AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,  # one try per poll: the next poll is the retry
            reconnect_delay=0,  # 0 turns pymodbus' own reconnect off; the link reconnects
        ))

    def _refused(self) -> str:
        # pymodbus swallows the OSError; a fast failure is a refusal or no route.
        return f"comm_lost: connection refused by {self.name} (or unreachable)"

    def sent(self) -> None:
        self._answered = True

    def failed(self, exc: BaseException, unit: int) -> tuple[str, bool]:
        """Reason for a failed request and whether the link is at fault (always, on TCP)."""
        client = self._client
        if client is None or not client.connected:
            reason = f"comm_lost: connection to {self.name} lost"
        else:
            reason = (f"comm_timeout: no answer from {self.name} (unit {unit}) within "
                      f"{self.timeout_s:g}s ({type(exc).__name__})")
            if self._answered:
                reason += "; the connection answered before and may be half-open"
            else:  # a TCP device (or gateway) stays silent for a unit id it does not serve
                reason += f"; check that the device answers for unit {unit}"
        # A late answer would arrive out of step with the next request: start afresh.
        self.lost(reason)
        return reason, True


def rtu_frame_gap_s(baudrate: int) -> float:
    """The 3.5-character silence that ends an RTU frame (fixed 1.75 ms above 19200 baud)."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * 11 / baudrate  # 11 bits a character: start, 8 data, parity/stop, stop


class SerialBus(_Link):
    """One RS-485 line shared by every unit on it: one client, one lock, frame gaps kept.

    Several drivers (one per unit id) use the same bus; the port opens on first use and closes
    when the last driver detaches.
    """

    def __init__(self, port: str, *, baudrate: int = 9600, bytesize: int = 8,
                 parity: str = "E", stopbits: int = 1, timeout_s: float = 1.0,
                 frame_gap_s: float | None = None, backoff: Backoff | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(port, timeout_s, backoff or Backoff(), rng)
        self.settings = (baudrate, bytesize, parity, stopbits)
        self.frame_gap_s = rtu_frame_gap_s(baudrate) if frame_gap_s is None else frame_gap_s
        self._last_frame = 0.0
        self._users = 0

    def attach(self) -> None:
        self._users += 1

    def detach(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.drop()

    def new_client(self) -> ModbusBaseClient:
        baudrate, bytesize, parity, stopbits = self.settings
        return fast_responses(AsyncModbusSerialClient(
            self.name,
            framer=FramerType.RTU,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
        ))

    paced = True

    def _refused(self) -> str:
        return f"comm_lost: cannot open serial port {self.name}"

    async def pace(self) -> None:
        # RTU needs a 3.5-character gap between frames, or the units read two frames as one.
        wait = self._last_frame + self.frame_gap_s - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def sent(self) -> None:
        self._last_frame = asyncio.get_running_loop().time()

    def failed(self, exc: BaseException, unit: int) -> tuple[str, bool]:
        """A unit that does not answer is its own fault; a port that fails is the bus's."""
        self.sent()
        client = self._client
        if client is None or not client.connected or isinstance(exc, OSError):
            reason = f"comm_lost: serial port {self.name} failed ({type(exc).__name__})"
            self.lost(reason)
            return reason, True
        kind = "no answer" if isinstance(exc, TimeoutError | ModbusException) else "bad answer"
        return (f"comm_timeout: {kind} from unit {unit} on {self.name} within "
                f"{self.timeout_s:g}s"), False


ModbusLink = TcpLink | SerialBus
