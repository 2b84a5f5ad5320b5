"""Modbus signal parsing, decoding and the poll plan (merged reads per interval and table).

Configuration is checked and compiled once: each signal becomes a `Point` with a decoder built
for its type, byte/word order and scale; points sharing an interval and a table are merged into
as few reads as the protocol allows (125 registers / 2000 bits per request, bridging gaps of up
to `max_gap` unused addresses). The driver's hot loop only executes the plan.

Address syntax: `hr:N` holding register (FC3), `ir:N` input register (FC4), `co:N` coil (FC1),
`di:N` discrete input (FC2), `hr:N.b` / `ir:N.b` bit b (0 = least significant) of a register;
N = 0..65535 (the protocol address, not the 4xxxx notation).

Types: `bool` (coils, discrete inputs, register bits), `int16`, `uint16`, `int32`, `uint32`,
`int64`, `uint64`, `float32`, `float64`, `string(n)` (n bytes, NULs and trailing spaces cut).
Byte order is the order of the two bytes inside each register, word order the order of the
registers of a multi-register value; both `big` by default (first register = high word).
`scale`/`offset` give `raw * scale + offset` (a float).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter

from drivers.base import ConfigError, Value
from drivers.settings import MODBUS_ADDRESS, ModbusSignal

MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

_STRING = re.compile(r"^string\((\d{1,3})\)$")

#: type name -> (registers, struct format of the big-endian bytes)
NUMERIC_TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "int64": (4, ">q"),
    "uint64": (4, ">Q"),
    "float32": (2, ">f"),
    "float64": (4, ">d"),
}
TYPE_NAMES = ("bool", *NUMERIC_TYPES, "string(n)")
ORDERS = ("big", "little")

Decoder = Callable[[Sequence[int] | Sequence[bool], int], Value]
#: Decodes a whole response into the values of a read's points, in the points' order.
BatchDecoder = Callable[[Sequence[int] | Sequence[bool]], Sequence[Value]]


class Table(StrEnum):
    """The four Modbus data tables, by their address prefix."""

    HOLDING = "hr"
    INPUT = "ir"
    COIL = "co"
    DISCRETE = "di"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def limit(self) -> int:
        """The most registers or bits one request may read."""
        return MAX_BITS_PER_READ if self.is_bits else MAX_REGISTERS_PER_READ


@dataclass(frozen=True, slots=True)
class Point:
    """A parsed signal: where it lives and how to decode it."""

    signal: str
    table: Table
    address: int
    type: str
    width: int  # registers, or 1 for a bit
    decode: Decoder = field(compare=False, repr=False)
    #: struct code when the value is a plain big-endian number (no scale, no bit, not a
    #: string), so a whole read can be unpacked at once; "" otherwise.
    bulk: str = field(default="", compare=False, repr=False)

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
    #: The points' signal names, and a decoder of the whole response (both built once here,
    #: so that a poll costs a few C calls per read instead of Python work per point).
    signals: tuple[str, ...] = field(init=False, compare=False, repr=False)
    decode_all: BatchDecoder = field(init=False, compare=False, repr=False)
    bits: bool = field(init=False, compare=False, repr=False)  # table.is_bits, looked up once

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", self.table.is_bits)
        object.__setattr__(self, "signals", tuple(p.signal for p in self.points))
        object.__setattr__(self, "decode_all", batch_decoder(self))

    @property
    def ref(self) -> str:
        return f"{self.table}:{self.start}+{self.count}"


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Signals sharing one interval, and the reads that cover them."""

    interval_s: float
    reads: tuple[Read, ...]


# --- decoders ---------------------------------------------------------------------------------


def _scaled(decode: Decoder, scale: float | None, offset: float | None) -> Decoder:
    if scale is None and offset is None:
        return decode
    k, c = 1.0 if scale is None else scale, 0.0 if offset is None else offset

    def scaled(values: Sequence[int] | Sequence[bool], at: int) -> Value:
        raw = decode(values, at)
        return None if raw is None or isinstance(raw, str) else raw * k + c

    return scaled


def _raw_bytes(values: Sequence[int] | Sequence[bool], at: int, words: int,
               byte_order: str, word_order: str) -> bytes:
    regs = [int(v) & 0xFFFF for v in values[at : at + words]]
    if word_order == "little":
        regs.reverse()
    if byte_order == "little":
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return struct.pack(f">{words}H", *regs)


def make_decoder(type_: str, *, bit: int | None, byte_order: str, word_order: str) -> Decoder:
    """A function `(values, offset) -> value` for one point; offset indexes the read's values."""
    if type_ == "bool":
        if bit is None:
            return lambda values, at: bool(values[at])
        mask = 1 << bit
        return lambda values, at: bool(int(values[at]) & mask)
    match = _STRING.match(type_)
    if match:
        size = int(match.group(1))
        words = (size + 1) // 2

        def text(values: Sequence[int] | Sequence[bool], at: int) -> Value:
            raw = _raw_bytes(values, at, words, byte_order, word_order)[:size]
            return raw.split(b"\0", 1)[0].decode("latin-1").rstrip()

        return text
    words, fmt = NUMERIC_TYPES[type_]
    if type_ == "uint16" and byte_order == "big":
        return lambda values, at: int(values[at])  # the common case, kept cheap
    unpack = struct.Struct(fmt).unpack

    def number(values: Sequence[int] | Sequence[bool], at: int) -> Value:
        value: int | float = unpack(_raw_bytes(values, at, words, byte_order, word_order))[0]
        return value

    return number


def batch_decoder(read: Read) -> BatchDecoder:
    """A function `values -> [value of each point]` for one read (values as the device sent).

    Equal to calling each point's own decoder, only cheaper: plain uint16 points (the bulk of
    a real tag list) are sliced or picked out in C, other plain big-endian numbers come from one
    `struct` unpack of the whole response, and only bits of registers, strings, scaled values
    and little-endian orders are decoded point by point.
    """
    points = read.points
    offsets = [p.address - read.start for p in points]
    n = len(points)
    if n == 0:
        return lambda values: []
    if read.bits:
        if offsets == list(range(n)):
            return lambda values: list(map(bool, values[:n]))
        pick_bits = _picker(offsets)
        return lambda values: list(map(bool, pick_bits(values)))
    if all(p.bulk == "H" for p in points):
        if offsets == list(range(n)):
            return lambda values: values[:n]
        return _picker(offsets)
    # One struct format over the read's bytes covers the plain numbers in address order that
    # do not overlap; the others (and any overlapping) use their own decoder.
    layout, bulk_index, end = [">"], [], 0
    for i in sorted(range(n), key=lambda i: offsets[i]):
        p, at = points[i], offsets[i]
        if p.bulk and at >= end:
            if at > end:
                layout.append(f"{2 * (at - end)}x")
            layout.append(p.bulk)
            bulk_index.append(i)
            end = at + p.width
    in_bulk = set(bulk_index)
    others = [(points[i].decode, offsets[i]) for i in range(n) if i not in in_bulk]
    if len(bulk_index) < 2:
        pairs = [(p.decode, at) for p, at in zip(points, offsets, strict=True)]
        return lambda values: [dec(values, at) for dec, at in pairs]
    unpack = struct.Struct("".join(layout)).unpack
    words = end
    pack = struct.Struct(f">{words}H").pack
    if not others:
        if bulk_index == list(range(n)):
            return lambda values: unpack(pack(*values[:words]))
        return _reorder(bulk_index, lambda values: unpack(pack(*values[:words])))
    # Bulk values first, then the others; `order` puts each point's value back in its place.
    slot = {i: k for k, i in enumerate(bulk_index)}
    rest = [i for i in range(n) if i not in in_bulk]
    slot.update({i: len(bulk_index) + k for k, i in enumerate(rest)})
    order = itemgetter(*(slot[i] for i in range(n)))

    def mixed(values: Sequence[int] | Sequence[bool]) -> Sequence[Value]:
        found = unpack(pack(*values[:words])) + tuple(dec(values, at) for dec, at in others)
        decoded: Sequence[Value] = order(found)
        return decoded

    return mixed


def _picker(offsets: list[int]) -> BatchDecoder:
    if len(offsets) == 1:
        only = offsets[0]
        return lambda values: [values[only]]
    return itemgetter(*offsets)


def _reorder(bulk_index: list[int], decode: BatchDecoder) -> BatchDecoder:
    slot = {i: k for k, i in enumerate(bulk_index)}
    order = itemgetter(*(slot[i] for i in range(len(bulk_index))))
    return lambda values: order(decode(values))


# --- parsing and merging ----------------------------------------------------------------------


def type_width(type_: str) -> int | None:
    """Registers a register type occupies; None if the name is not a register type."""
    if type_ in NUMERIC_TYPES:
        return NUMERIC_TYPES[type_][0]
    match = _STRING.match(type_)
    if match and 1 <= int(match.group(1)) <= 2 * MAX_REGISTERS_PER_READ:
        return (int(match.group(1)) + 1) // 2
    return None


def parse_signal(signal: ModbusSignal) -> Point:
    """Check one signal's address and type; ConfigError names the signal and what is expected."""
    where = f"signal {signal.name!r}: address {signal.address!r}"
    if not signal.name:
        raise ConfigError(f"signal with address {signal.address!r}: empty name")
    match = MODBUS_ADDRESS.match(signal.address.strip())
    if match is None:
        raise ConfigError(
            f"{where}: expected hr:N, ir:N, co:N or di:N (or hr:N.b / ir:N.b for a register bit)"
        )
    table, address = Table(match.group(1)), int(match.group(2))
    bit = None if match.group(3) is None else int(match.group(3))
    type_ = signal.type
    if bit is not None:
        if table.is_bits:
            raise ConfigError(f"{where}: a bit number only applies to registers (hr, ir)")
        if bit > 15:
            raise ConfigError(f"{where}: bit {bit}: expected 0..15")
        if type_ != "bool":
            raise ConfigError(f"{where}: type {type_!r}: a register bit is read as bool")
        width = 1
    elif table.is_bits:
        if type_ != "bool":
            raise ConfigError(f"{where}: type {type_!r}: expected bool for {table}:N")
        width = 1
    else:
        found = type_width(type_)
        if found is None:
            hint = " (or a bit: hr:N.b)" if type_ == "bool" else ""
            raise ConfigError(
                f"{where}: type {type_!r}: expected one of {', '.join(TYPE_NAMES[1:])} "
                f"for {table}:N{hint}; string(n) takes n = 1..250"
            )
        width = found
    if address + width - 1 > 0xFFFF:
        raise ConfigError(f"{where}: expected N + width <= 65536")
    for name, order in (("byte_order", signal.byte_order), ("word_order", signal.word_order)):
        if order not in ORDERS:
            raise ConfigError(f"signal {signal.name!r}: {name} {order!r}: expected big or little")
    if not signal.interval_s > 0:
        raise ConfigError(f"signal {signal.name!r}: interval_s {signal.interval_s!r}: expected > 0")
    if (signal.scale is not None or signal.offset is not None) and (
        type_ == "bool" or type_.startswith("string")
    ):
        raise ConfigError(f"signal {signal.name!r}: scale/offset need a numeric type")
    decode = make_decoder(
        type_, bit=bit, byte_order=signal.byte_order, word_order=signal.word_order
    )
    plain = (bit is None and type_ in NUMERIC_TYPES and signal.scale is None
             and signal.offset is None and signal.byte_order == "big"
             and (signal.word_order == "big" or width == 1))
    return Point(
        signal.name, table, address, type_, width, _scaled(decode, signal.scale, signal.offset),
        NUMERIC_TYPES[type_][1][1] if plain else "",
    )


def merge_reads(points: Iterable[Point], *, max_gap: int) -> list[Read]:
    """Cover `points` (one table) with as few reads as the size limit and `max_gap` allow.

    Points are taken in address order and a read grows while the next point starts within
    `max_gap` of its end and the read stays within the protocol's limit. With points sorted and
    the limit fixed, this greedy cover is minimal.
    """
    ordered = sorted(points, key=lambda p: (p.address, p.width))
    if not ordered:
        return []
    limit = ordered[0].table.limit
    reads: list[Read] = []
    start, end, members = ordered[0].address, ordered[0].address + ordered[0].width, [ordered[0]]
    for p in ordered[1:]:
        new_end = max(end, p.address + p.width)
        if p.address - end <= max_gap and new_end - start <= limit:
            end = new_end
            members.append(p)
            continue
        reads.append(Read(p.table, start, end - start, tuple(members)))
        start, end, members = p.address, p.address + p.width, [p]
    reads.append(Read(ordered[0].table, start, end - start, tuple(members)))
    return reads


def split_read(read: Read) -> list[Read]:
    """Two reads covering `read`'s points, cut at the widest gap between neighbours.

    Used when a device answers a merged read with "illegal data address": the hole is most
    likely in a gap, and halving again on the next refusal finds it in log2(points) steps.
    """
    points = sorted(read.points, key=lambda p: (p.address, p.width))
    if len(points) < 2:
        return [read]
    best, cut = -1, len(points) // 2
    end = points[0].address + points[0].width
    for i in range(1, len(points)):
        gap = points[i].address - end
        if gap > best:
            best, cut = gap, i
        end = max(end, points[i].address + points[i].width)
    if best <= 0:
        cut = len(points) // 2
    out = []
    for part in (points[:cut], points[cut:]):
        first = part[0].address
        last = max(p.address + p.width for p in part)
        out.append(Read(read.table, first, last - first, tuple(part)))
    return out


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


def decode(point: Point, read: Read, values: Sequence[int] | Sequence[bool]) -> Value:
    """The value of `point` from the raw words/bits `values` returned for `read`."""
    return point.decode(values, point.address - read.start)
