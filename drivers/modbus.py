"""Modbus TCP polling driver (pymodbus 3.x `AsyncModbusTcpClient`).

Configuration is checked and compiled once into a poll plan: signals grouped by interval, and
per group and table, neighbouring addresses merged into as few reads as the protocol allows
(125 registers / 2000 bits per request, bridging gaps up to `max_gap`). `samples()` only
executes the plan.

Contract (see `drivers.base.Driver`):
- `samples()` connects on first use and polls each group on monotonic deadlines (`loop.time()`);
  a cycle that is already late when the previous one ends is skipped and counted in `overruns`,
  never run in a burst.
- Every signal gets a sample on every successful poll (the mapping detects changes itself).
- A fault (timeout, refused or lost connection, Modbus exception response) yields one `BAD`
  sample per affected signal with a reason, logged once at ERROR; nothing more for those
  signals until they read again (logged once at INFO). The driver reconnects by itself with
  exponential backoff and jitter.
- No sample is yielded after `close()` returns.

Address syntax: `hr:N` holding register (FC3), `ir:N` input register (FC4), `co:N` coil (FC1),
`di:N` discrete input (FC2), N = 0..65535 (the protocol address, not the 4xxxx notation).
Types: `bool` for coils and discrete inputs; `uint16`, `int16`, `uint32`, `int32` for
registers, 32-bit values big-endian in both bytes and words (first register = high word).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.base import ConfigError, Quality, Sample, Value

log = logging.getLogger(__name__)

MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

_ADDRESS = re.compile(r"^(hr|ir|co|di):(\d{1,5})$")

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class Table(StrEnum):
    """The four Modbus data tables, by their address prefix."""

    HOLDING = "hr"
    INPUT = "ir"
    COIL = "co"
    DISCRETE = "di"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


# type name -> (registers, signed); bool is the bit type.
_REGISTER_TYPES: dict[str, tuple[int, bool]] = {
    "uint16": (1, False),
    "int16": (1, True),
    "uint32": (2, False),
    "int32": (2, True),
}


@dataclass(frozen=True, slots=True)
class ModbusSignal:
    """One value to poll.

    `address` is `hr:N`, `ir:N`, `co:N` or `di:N`; `type` is `bool` (coils, discrete inputs) or
    `uint16`/`int16`/`uint32`/`int32` (registers); `interval_s` is the poll period in seconds.
    """

    name: str
    address: str
    type: str = "uint16"
    interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    """One Modbus TCP device and the signals read from it.

    `timeout_s` bounds connect and each request; `max_gap` is how many unused registers/bits
    a merged read may span between two signals; the backoff doubles from `backoff_initial_s`
    to `backoff_max_s`, each delay varied by +/- `backoff_jitter` (a fraction) so that many
    gateways do not reconnect in step.
    """

    name: str
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    signals: tuple[ModbusSignal, ...] = ()
    max_gap: int = 8
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    backoff_jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class Point:
    """A parsed signal: where it lives and how to decode it."""

    signal: str
    table: Table
    address: int
    type: str
    width: int  # registers, or 1 for a bit

    @property
    def ref(self) -> str:
        return f"{self.table}:{self.address}"


@dataclass(frozen=True, slots=True)
class Read:
    """One request of the plan: `count` registers/bits of `table` from `start`."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    @property
    def ref(self) -> str:
        return f"{self.table}:{self.start}+{self.count}"


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Signals sharing one interval, and the reads that cover them."""

    interval_s: float
    reads: tuple[Read, ...]


def parse_signal(signal: ModbusSignal) -> Point:
    """Check one signal's address and type; ConfigError names the signal and what is expected."""
    where = f"signal {signal.name!r}"
    if not signal.name:
        raise ConfigError(f"signal with address {signal.address!r}: empty name")
    match = _ADDRESS.match(signal.address.strip())
    if match is None:
        raise ConfigError(
            f"{where}: address {signal.address!r}: expected hr:N, ir:N, co:N or di:N"
        )
    table, address = Table(match.group(1)), int(match.group(2))
    if table.is_bits:
        if signal.type != "bool":
            raise ConfigError(
                f"{where}: address {signal.address!r}: type {signal.type!r}: "
                f"expected bool for {table}:N"
            )
        width = 1
    else:
        if signal.type not in _REGISTER_TYPES:
            raise ConfigError(
                f"{where}: address {signal.address!r}: type {signal.type!r}: "
                f"expected one of {', '.join(_REGISTER_TYPES)} for {table}:N"
            )
        width = _REGISTER_TYPES[signal.type][0]
    if address + width - 1 > 0xFFFF:
        raise ConfigError(f"{where}: address {signal.address!r}: expected N + width <= 65536")
    if not signal.interval_s > 0:
        raise ConfigError(f"{where}: interval_s {signal.interval_s!r}: expected > 0")
    return Point(signal.name, table, address, signal.type, width)


def merge_reads(points: Iterable[Point], *, max_gap: int) -> list[Read]:
    """Cover `points` (one table) with as few reads as the size limit and `max_gap` allow."""
    ordered = sorted(points, key=lambda p: (p.address, p.width))
    if not ordered:
        return []
    limit = MAX_BITS_PER_READ if ordered[0].table.is_bits else MAX_REGISTERS_PER_READ
    reads: list[Read] = []
    start, end, members = ordered[0].address, ordered[0].address + ordered[0].width, [ordered[0]]
    for p in ordered[1:]:
        new_end = max(end, p.address + p.width)
        if p.address - end <= max_gap and new_end - start <= limit:
            end, members = new_end, [*members, p]
            continue
        reads.append(Read(p.table, start, end - start, tuple(members)))
        start, end, members = p.address, p.address + p.width, [p]
    reads.append(Read(ordered[0].table, start, end - start, tuple(members)))
    return reads


def compile_plan(signals: Sequence[ModbusSignal], *, max_gap: int = 8) -> tuple[PollGroup, ...]:
    """Parse every signal and merge reads per interval and table; raises ConfigError."""
    if max_gap < 0:
        raise ConfigError(f"max_gap {max_gap}: expected >= 0")
    seen: set[str] = set()
    by_interval: dict[float, list[Point]] = {}
    for signal in signals:
        if signal.name in seen:
            raise ConfigError(f"signal {signal.name!r}: defined twice")
        seen.add(signal.name)
        by_interval.setdefault(signal.interval_s, []).append(parse_signal(signal))
    groups = []
    for interval in sorted(by_interval):
        reads: list[Read] = []
        for table in Table:
            reads += merge_reads(
                (p for p in by_interval[interval] if p.table is table), max_gap=max_gap
            )
        groups.append(PollGroup(interval, tuple(reads)))
    return tuple(groups)


def check_device(config: ModbusDeviceConfig) -> None:
    """Check the device-level settings; ConfigError names the device and the field."""
    where = f"modbus device {config.name!r}"
    if not config.name:
        raise ConfigError(f"modbus device at {config.host}:{config.port}: empty name")
    if not config.host:
        raise ConfigError(f"{where}: host: expected a host name or IP address")
    if not 0 < config.port <= 0xFFFF:
        raise ConfigError(f"{where}: port {config.port}: expected 1..65535")
    if not 0 <= config.unit_id <= 255:
        raise ConfigError(f"{where}: unit_id {config.unit_id}: expected 0..255")
    if not config.timeout_s > 0:
        raise ConfigError(f"{where}: timeout_s {config.timeout_s}: expected > 0")
    if not 0 < config.backoff_initial_s <= config.backoff_max_s:
        raise ConfigError(f"{where}: backoff: expected 0 < backoff_initial_s <= backoff_max_s")
    if not 0 <= config.backoff_jitter < 1:
        raise ConfigError(f"{where}: backoff_jitter {config.backoff_jitter}: expected 0..1")


def decode(point: Point, read: Read, values: Sequence[int] | Sequence[bool]) -> Value:
    """The value of `point` from the raw words/bits `values` returned for `read`."""
    offset = point.address - read.start
    if point.table.is_bits:
        return bool(values[offset])
    words, signed = _REGISTER_TYPES[point.type]
    raw = 0
    for word in values[offset : offset + words]:
        raw = (raw << 16) | (int(word) & 0xFFFF)
    bits = 16 * words
    if signed and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


class _ReadFailed(Exception):
    """A read did not produce values; `link` tells whether the connection is at fault."""

    def __init__(self, reason: str, *, link: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link = link


@dataclass
class _Deadline:
    group: PollGroup
    due: float


class ModbusDriver:
    """Polls one Modbus TCP device by its compiled plan (see the module docstring).

    Counters: `reads` (requests sent), `read_errors` (polls of a read that produced no values,
    including those skipped while the link waits for its backoff), `reconnects` (successful
    connects after a loss), `overruns` (poll cycles skipped because the previous one was late).
    """

    def __init__(self, config: ModbusDeviceConfig, *, rng: random.Random | None = None) -> None:
        check_device(config)
        self.config = config
        self.name = config.name
        self.plan = compile_plan(config.signals, max_gap=config.max_gap)
        self.reads = 0
        self.read_errors = 0
        self.reconnects = 0
        self.overruns = 0
        self._rng = rng or random.Random()
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()  # one request at a time on the link
        self._closed = asyncio.Event()
        self._link_fault: str | None = None  # reason while the link is down
        self._read_faults: dict[Read, str] = {}  # Modbus exception per read, while it lasts
        self._bad: dict[str, str] = {}  # signal -> kind of the fault already reported
        self._ever_connected = False
        self._backoff = config.backoff_initial_s
        self._next_connect = 0.0

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def samples(self) -> AsyncIterator[Sample]:
        """Poll forever (until `close()`), yielding one sample per signal per poll."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = [_Deadline(g, now) for g in self.plan]
        if not deadlines:
            await self._closed.wait()  # nothing to poll: honour the contract, end at close
            return
        try:
            while not self._closed.is_set():
                slot = min(deadlines, key=lambda d: d.due)
                if await self._wait_until(slot.due):
                    return
                for read in slot.group.reads:
                    for sample in await self._poll(read):
                        if self._closed.is_set():
                            return
                        yield sample
                self._advance(slot, loop.time())
        finally:
            # Closed, or the consumer stopped iterating: either way the link has no reader.
            self._disconnect()

    async def close(self) -> None:
        """Stop polling and drop the connection; no sample is yielded after this returns."""
        # Not under the lock: a request in flight may wait for its timeout, and close must
        # not. The generator checks the flag before every yield, so nothing follows this.
        self._closed.set()
        self._disconnect()

    # --- scheduling ------------------------------------------------------------------------

    async def _wait_until(self, due: float) -> bool:
        """Sleep until a loop.time() deadline; True if closed meanwhile."""
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=delay)
            except TimeoutError:
                pass
        return self._closed.is_set()

    def _advance(self, slot: _Deadline, now: float) -> None:
        interval = slot.group.interval_s
        slot.due += interval
        if slot.due <= now:
            # Late: skip the missed cycles instead of bursting to catch up.
            missed = int((now - slot.due) // interval) + 1
            self.overruns += missed
            slot.due += missed * interval

    # --- one read --------------------------------------------------------------------------

    async def _poll(self, read: Read) -> list[Sample]:
        try:
            values = await self._read(read)
        except _ReadFailed as exc:
            self.read_errors += 1
            return self._fault_samples(read, exc)
        received, mono = time.time(), asyncio.get_running_loop().time()
        self._recovered(read)
        return [
            Sample(p.signal, decode(p, read, values), Quality.GOOD, received, mono)
            for p in read.points
        ]

    async def _read(self, read: Read) -> Sequence[int] | Sequence[bool]:
        async with self._lock:
            if self._closed.is_set():
                raise _ReadFailed("closed", link=True)
            client = await self._connected()
            self.reads += 1
            try:
                response = await self._request(client, read)
            except (TimeoutError, ModbusException, OSError) as exc:
                lost = not client.connected
                # A late answer would arrive out of step with the next request: start afresh.
                self._disconnect()
                self._schedule_reconnect()
                if lost:
                    raise _ReadFailed(
                        f"comm_lost: connection to {self.target} lost", link=True
                    ) from exc
                raise _ReadFailed(
                    f"comm_timeout: no answer from {self.target} within "
                    f"{self.config.timeout_s:g}s ({type(exc).__name__})",
                    link=True,
                ) from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise _ReadFailed(
                f"modbus_exception: {name} (code {code}) reading {read.ref} "
                f"from unit {self.config.unit_id}",
                link=False,
            )
        values = response.bits if read.table.is_bits else response.registers
        if len(values) < read.count:
            raise _ReadFailed(
                f"bad_response: {len(values)} values for {read.ref}", link=False
            )
        return values

    async def _request(self, client: AsyncModbusTcpClient, read: Read) -> ModbusPDU:
        unit, start, count = self.config.unit_id, read.start, read.count
        # pymodbus has its own timeout per try; this bound covers the whole call regardless.
        bound = self.config.timeout_s * 1.5
        if read.table is Table.HOLDING:
            call = client.read_holding_registers(start, count=count, device_id=unit)
        elif read.table is Table.INPUT:
            call = client.read_input_registers(start, count=count, device_id=unit)
        elif read.table is Table.COIL:
            call = client.read_coils(start, count=count, device_id=unit)
        else:
            call = client.read_discrete_inputs(start, count=count, device_id=unit)
        return await asyncio.wait_for(call, timeout=bound)

    async def _connected(self) -> AsyncModbusTcpClient:
        """The connected client, connecting if the backoff allows; raises _ReadFailed."""
        if self._client is not None and self._client.connected:
            return self._client
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect:
            raise _ReadFailed(self._link_fault or f"comm_lost: not connected to {self.target}",
                              link=True)
        self._disconnect()
        client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout_s,
            retries=0,  # one try per poll: the next poll is the retry
            reconnect_delay=0,  # 0 turns pymodbus' own reconnect off; we reconnect ourselves
        )
        started = loop.time()
        ok = await client.connect()
        if not ok or not client.connected:
            client.close()
            self._schedule_reconnect()
            if loop.time() - started >= self.config.timeout_s * 0.9:
                raise _ReadFailed(
                    f"comm_timeout: connect to {self.target} timed out after "
                    f"{self.config.timeout_s:g}s",
                    link=True,
                )
            # pymodbus swallows the OSError; a fast failure is a refusal or no route.
            raise _ReadFailed(
                f"comm_lost: connection refused by {self.target} (or unreachable)", link=True
            )
        self._client = client
        self._backoff = self.config.backoff_initial_s
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        return client

    def _schedule_reconnect(self) -> None:
        jitter = 1.0 + self._rng.uniform(-self.config.backoff_jitter, self.config.backoff_jitter)
        self._next_connect = asyncio.get_running_loop().time() + self._backoff * jitter
        self._backoff = min(self._backoff * 2, self.config.backoff_max_s)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- fault bookkeeping (log transitions, not repetitions) ------------------------------

    def _fault_samples(self, read: Read, exc: _ReadFailed) -> list[Sample]:
        if exc.link:
            if self._link_fault is None:
                log.error(
                    "modbus device %s: %s", self.name, exc.reason,
                    extra={"device": self.name, "address": self.target, "reason": exc.reason},
                )
            self._link_fault = exc.reason
        elif read not in self._read_faults:
            self._read_faults[read] = exc.reason
            log.error(
                "modbus device %s: %s", self.name, exc.reason,
                extra={"device": self.name, "address": read.ref, "reason": exc.reason},
            )
        received, mono = time.time(), asyncio.get_running_loop().time()
        out = []
        for p in read.points:
            kind = exc.reason.split(":", 1)[0]
            if self._bad.get(p.signal) == kind:
                continue  # already reported; quiet until it reads again or the fault changes
            self._bad[p.signal] = kind
            out.append(Sample(p.signal, None, Quality.BAD, received, mono, exc.reason))
        return out

    def _recovered(self, read: Read) -> None:
        if self._link_fault is not None:
            log.info(
                "modbus device %s: recovered after %s", self.name, self._link_fault,
                extra={"device": self.name, "address": self.target, "reason": "recovered"},
            )
            self._link_fault = None
        reason = self._read_faults.pop(read, None)
        if reason is not None:
            log.info(
                "modbus device %s: %s reads again", self.name, read.ref,
                extra={"device": self.name, "address": read.ref, "reason": "recovered"},
            )
        for p in read.points:
            self._bad.pop(p.signal, None)
