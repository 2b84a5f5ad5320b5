"""Modbus polling driver (pymodbus 3.x), over TCP or an RTU serial bus (`drivers.modbus_link`).

The plan (`drivers.modbus_plan`) is compiled once; `samples()` only executes it.

Contract (see `drivers.base.Driver`):
- `samples()` connects on first use and polls each group on monotonic deadlines (`loop.time()`);
  a cycle that is already late when the previous one ends is skipped and counted in `overruns`,
  never run in a burst. The first cycle starts `stagger_s` after `samples()` is called, so that
  many devices do not all poll in the same instant.
- One request at a time per link (the link's lock); RTU keeps its inter-frame gap.
- Every signal gets a sample on every successful poll (the mapping detects changes itself).
  `batches()` yields the same samples a request at a time (see `drivers.base.BatchDriver`).
- A merged read answered with "illegal data address" (a hole in the device's map) is split in
  two and both halves read at once; the split is kept for later cycles (`splits` counts them).
  A single-signal read answered so gives that signal a `BAD` sample.
- A fault (timeout, refused, lost or half-open connection, Modbus exception response) yields one
  `BAD` sample per affected signal with a named reason, logged once at ERROR; nothing more for
  those signals until they read again (logged once at INFO; `drivers.modbus_faults`). The
  link reconnects by itself with exponential backoff and jitter; an RTU unit that stops
  answering backs off alone, so it does not eat the bus time of the other units.
- No sample is yielded after `close()` returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers.base import ConfigError, DriverCounters, Quality, Sample, flatten, make_samples
from drivers.modbus_faults import EXCEPTION_NAMES, Faults, ReadFailed, unit_exception
from drivers.modbus_link import LinkDown, ModbusLink, SerialBus, TcpLink
from drivers.modbus_plan import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    PollGroup,
    Read,
    Table,
    compile_plan,
    decode,
    parse_signal,
    split_read,
)
from drivers.settings import ModbusDeviceConfig, ModbusSignal

__all__ = [
    "EXCEPTION_NAMES",
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "ModbusDeviceConfig",
    "ModbusDriver",
    "ModbusSignal",
    "Table",
    "check_device",
    "compile_plan",
    "decode",
    "parse_signal",
]

log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 2
CYCLE_HISTORY = 1000  # poll cycles kept per driver for statistics

#: The pymodbus client method of each table (function codes 3, 4, 1, 2).
_CALLS = {
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
    Table.COIL: "read_coils",
    Table.DISCRETE: "read_discrete_inputs",
}

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
    if not config.stagger_s >= 0:
        raise ConfigError(f"{where}: stagger_s {config.stagger_s}: expected >= 0")
    config.backoff.check(where)


@dataclass
class _Slot:
    """One poll group's schedule and its current reads (splits replace entries)."""

    interval_s: float
    reads: list[Read]
    due: float


class ModbusDriver:
    """Polls one Modbus device by its compiled plan (see the module docstring).

    Counters: `reads` (requests sent), `read_errors` (polls of a read that produced no values,
    including those skipped while the link waits for its backoff), `errors_by_reason` (the
    same by `comm_timeout`, `comm_lost`, `bad_response`, the Modbus exception's name...),
    `overruns` (poll cycles skipped because the previous one was late), `splits` (merged reads
    split after an "illegal data address"), `reconnects` (of the link), `good_samples` and
    `bad_samples` (made); `counters()` gives them all at once for a metrics exporter.
    """

    def __init__(self, config: ModbusDeviceConfig, *, link: ModbusLink | None = None,
                 rng: random.Random | None = None) -> None:
        check_device(config)
        self.config = config
        self.name = config.name
        self.plan: tuple[PollGroup, ...] = compile_plan(config.signals, max_gap=config.max_gap)
        self.link: ModbusLink = link or TcpLink(
            config.host, config.port, timeout_s=config.timeout_s, backoff=config.backoff, rng=rng
        )
        if isinstance(self.link, SerialBus):
            self.link.attach()
        #: Delay of the first poll (the gateway spreads devices over their interval).
        self.stagger_s = config.stagger_s
        self.reads = 0
        self.read_errors = 0
        self.errors_by_reason: dict[str, int] = {}
        self.overruns = 0
        self.splits = 0
        self.good_samples = 0
        self.bad_samples = 0
        #: Duration (ms) and requests of the latest poll cycles, for status and benchmarks.
        self.cycle_ms: deque[float] = deque(maxlen=CYCLE_HISTORY)
        self.cycle_reads: deque[int] = deque(maxlen=CYCLE_HISTORY)
        self._closed = asyncio.Event()
        self._stopped = False  # `_closed` as a plain flag: checked before every yield
        self._faults = Faults(self.name, self.link.name)
        # An RTU unit that stopped answering waits alone (the bus stays up for the others).
        self._unit_delay = config.backoff_initial_s
        self._unit_retry_at = 0.0
        self._unit_fault: str | None = None
        self._detached = False
        self._waiter: asyncio.Future[None] | None = None  # the sleep between cycles
        self._bound_s = config.timeout_s * 1.5

    @property
    def reconnects(self) -> int:
        return self.link.reconnects

    @property
    def target(self) -> str:
        return self.link.name

    def counters(self) -> DriverCounters:
        """A snapshot of the counters (see the class docstring)."""
        return DriverCounters(
            device=self.name, protocol="modbus", requests=self.reads,
            errors=dict(self.errors_by_reason), overruns=self.overruns,
            reconnects=self.reconnects, good_samples=self.good_samples,
            bad_samples=self.bad_samples, extra={"splits": self.splits},
        )

    def samples(self) -> AsyncIterator[Sample]:
        """Poll forever (until `close()`), yielding one sample per signal per poll."""
        return flatten(self.batches(), lambda: self._stopped)

    async def batches(self) -> AsyncGenerator[list[Sample], None]:
        """As `samples()`, one list per request: the samples of the signals it read.

        For consumers that can take many samples at a time (one queue hand-off per request
        instead of per signal); the order of the samples is that of `samples()`.
        """
        loop = asyncio.get_running_loop()
        first = loop.time() + self.stagger_s
        slots = [_Slot(g.interval_s, list(g.reads), first) for g in self.plan]
        if not slots:
            await self._closed.wait()  # nothing to poll: honour the contract, end at close
            return
        try:
            while not self._stopped:
                slot = slots[0] if len(slots) == 1 else min(slots, key=_due)
                if await self._wait_until(slot.due):
                    return
                started, reads_before = loop.time(), self.reads
                index = 0
                while index < len(slot.reads):
                    read = slot.reads[index]
                    samples, parts = await self._poll(read)
                    if parts:
                        # Remembered: later cycles read the halves; this cycle reads them now.
                        slot.reads[index : index + 1] = parts
                        continue
                    index += 1
                    if self._stopped:
                        return
                    if samples:
                        yield samples
                now = loop.time()
                self.cycle_ms.append((now - started) * 1000)
                self.cycle_reads.append(self.reads - reads_before)
                self._advance(slot, now)
        finally:
            # Closed, or the consumer stopped iterating: either way the link has no reader.
            self._release()

    async def close(self) -> None:
        """Stop polling and drop the connection; no sample is yielded after this returns."""
        # Not under the lock: a request in flight may wait for its timeout, and close must
        # not. The generator checks the flag before every yield, so nothing follows this.
        self._stopped = True
        self._closed.set()
        if self._waiter is not None:
            _wake(self._waiter)
        self._release()

    def _release(self) -> None:
        if self._detached:
            return
        self._detached = True
        if isinstance(self.link, SerialBus):
            self.link.detach()
        else:
            self.link.drop()

    # --- scheduling ------------------------------------------------------------------------

    async def _wait_until(self, due: float) -> bool:
        """Sleep until a loop.time() deadline; True if closed meanwhile.

        A bare future woken by `call_at` (or by `close()`): every device sleeps once per
        cycle, and `wait_for` would create a task each time.
        """
        loop = asyncio.get_running_loop()
        if due > loop.time() and not self._closed.is_set():
            waiter = loop.create_future()
            self._waiter = waiter
            handle = loop.call_at(due, _wake, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
        return self._closed.is_set()

    def _advance(self, slot: _Slot, now: float) -> None:
        interval = slot.interval_s
        slot.due += interval
        if slot.due <= now:
            # Late: skip the missed cycles instead of bursting to catch up.
            missed = int((now - slot.due) // interval) + 1
            self.overruns += missed
            slot.due += missed * interval

    # --- one read --------------------------------------------------------------------------

    async def _poll(self, read: Read) -> tuple[list[Sample], list[Read]]:
        """Samples of one read, or the two reads that replace it after a hole was found."""
        try:
            values = await self._read(read)
        except ReadFailed as exc:
            if exc.code == ILLEGAL_DATA_ADDRESS and len(read.points) > 1:
                self.splits += 1
                parts = split_read(read)
                log.info(
                    "modbus device %s: %s refused (illegal data address); reading it as %s",
                    self.name, read.ref, " and ".join(p.ref for p in parts),
                    extra={"device": self.name, "address": read.ref, "reason": "split"},
                )
                return [], parts
            self.read_errors += 1
            kind = exc.kind
            self.errors_by_reason[kind] = self.errors_by_reason.get(kind, 0) + 1
            bad = self._faults.failed(read, exc)
            self.bad_samples += len(bad)
            return bad, []
        received, mono = time.time(), asyncio.get_running_loop().time()
        if self._faults:
            self._faults.recovered(read)
        self.good_samples += len(read.signals)
        return make_samples(read.signals, read.decode_all(values), Quality.GOOD, received,
                            mono), []

    async def _read(self, read: Read) -> Sequence[int] | Sequence[bool]:
        link = self.link
        if self._unit_fault is not None and (
            asyncio.get_running_loop().time() < self._unit_retry_at
        ):
            raise ReadFailed(self._unit_fault, link=True)
        async with link.lock:
            if self._stopped:
                raise ReadFailed("closed", link=True)
            client = link.ready()  # no await while the connection is up (nearly always)
            if client is None:
                try:
                    client = await link.client()
                except LinkDown as down:
                    raise ReadFailed(down.reason, link=True) from None
            if link.paced:
                await link.pace()
            self.reads += 1
            unit = self.config.unit_id
            try:
                # pymodbus has its own timeout per try; this bound covers the whole call
                # regardless (asyncio.timeout, not wait_for: no extra task per request).
                async with asyncio.timeout(self._bound_s):
                    response: ModbusPDU = await getattr(client, _CALLS[read.table])(
                        read.start, count=read.count, device_id=unit)
            except (TimeoutError, ModbusException, OSError) as exc:
                reason, link_fault = link.failed(exc, unit)
                if not link_fault:
                    self._unit_backoff(reason)
                raise ReadFailed(reason, link=True) from exc
            link.sent()
        self._unit_fault = None
        self._unit_delay = self.config.backoff_initial_s
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ReadFailed(unit_exception(name, code, read.ref, self.config.unit_id),
                             link=False, code=code)
        values = response.bits if read.bits else response.registers
        if len(values) < read.count:
            raise ReadFailed(f"bad_response: {len(values)} values for {read.ref}", link=False)
        return values

    def _unit_backoff(self, reason: str) -> None:
        self._unit_fault = reason
        spread = self.config.backoff_jitter
        wait = self._unit_delay * (1.0 + random.uniform(-spread, spread))
        self._unit_retry_at = asyncio.get_running_loop().time() + wait
        self._unit_delay = min(self._unit_delay * 2, self.config.backoff_max_s)


def _due(slot: _Slot) -> float:
    return slot.due


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
