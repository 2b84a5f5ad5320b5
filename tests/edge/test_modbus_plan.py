"""The Modbus plan without I/O: types, byte/word orders, scale, bits, strings, merging, splits."""

from __future__ import annotations

import math
import random
import struct

import pytest

from drivers.base import ConfigError
from drivers.modbus_plan import (
    NUMERIC_TYPES,
    ModbusSignal,
    Point,
    Read,
    Table,
    compile_plan,
    merge_reads,
    parse_signal,
    split_read,
)


def words_of(fmt: str, value: object) -> list[int]:
    """Big-endian registers of a packed value (the Modbus default layout)."""
    raw = struct.pack(fmt, value)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def value_of(signal: ModbusSignal, words: list[int]) -> object:
    point = parse_signal(signal)
    return point.decode([0, 0, *words, 0], 2)  # offset 2 inside a larger read


CASES = [
    ("int16", ">h", -12345),
    ("uint16", ">H", 54321),
    ("int32", ">i", -2_000_000_001),
    ("uint32", ">I", 4_000_000_001),
    ("int64", ">q", -9_000_000_000_000_000_001),
    ("uint64", ">Q", 18_000_000_000_000_000_001),
    ("float32", ">f", 3.5),
    ("float64", ">d", -1234.56789),
]


@pytest.mark.parametrize(("type_", "fmt", "value"), CASES)
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_every_numeric_type_decodes_in_every_byte_and_word_order(
    type_: str, fmt: str, value: float, byte_order: str, word_order: str
) -> None:
    words = words_of(fmt, value)
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = swap_bytes(words)
    got = value_of(ModbusSignal("s", "hr:10", type_, 1.0, byte_order, word_order), words)
    assert got == pytest.approx(value) if isinstance(value, float) else got == value


def test_scale_offset_bits_and_strings() -> None:
    raw = words_of(">h", -250)
    assert value_of(ModbusSignal("t", "ir:0", "int16", scale=0.1, offset=273.15), raw) == (
        pytest.approx(248.15))
    assert value_of(ModbusSignal("t", "ir:0", "uint16", offset=-1), [5]) == 4.0
    for bit in range(16):
        point = parse_signal(ModbusSignal("b", f"hr:7.{bit}", "bool"))
        assert point.width == 1 and point.address == 7
        assert point.decode([1 << bit], 0) is True
        assert point.decode([0xFFFF ^ (1 << bit)], 0) is False
    text = b"WELD-07\0\0\0"
    words = list(struct.unpack(">5H", text))
    assert value_of(ModbusSignal("s", "hr:0", "string(10)"), words) == "WELD-07"
    assert value_of(ModbusSignal("s", "hr:0", "string(3)"), words[:2]) == "WEL"
    assert value_of(ModbusSignal("s", "hr:0", "string(10)", byte_order="little"),
                    swap_bytes(words)) == "WELD-07"
    assert parse_signal(ModbusSignal("s", "hr:0", "string(9)")).width == 5
    nan = value_of(ModbusSignal("f", "hr:0", "float32"), words_of(">f", float("nan")))
    assert isinstance(nan, float) and math.isnan(nan)


@pytest.mark.parametrize(
    ("signal", "fragment"),
    [
        (ModbusSignal("x", "hr:1.16", "bool"), "bit 16: expected 0..15"),
        (ModbusSignal("x", "co:1.2", "bool"), "only applies to registers"),
        (ModbusSignal("x", "hr:1.2", "uint16"), "a register bit is read as bool"),
        (ModbusSignal("x", "hr:1", "bool"), "or a bit: hr:N.b"),
        (ModbusSignal("x", "hr:1", "string(0)"), "string(n) takes n = 1..250"),
        (ModbusSignal("x", "hr:65533", "float64"), "N + width <= 65536"),
        (ModbusSignal("x", "hr:1", "uint16", byte_order="middle"), "byte_order 'middle'"),
        (ModbusSignal("x", "hr:1", "string(4)", scale=2.0), "scale/offset need a numeric"),
    ],
)
def test_bad_signals_are_config_errors_naming_signal_and_field(
    signal: ModbusSignal, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_signal(signal)
    assert "signal 'x'" in str(info.value) and fragment in str(info.value)


def test_coalescing_reaches_the_protocol_minimum() -> None:
    # 500 contiguous registers: ceil(500 / 125) = 4 reads; 4000 coils: 2 reads of 2000.
    regs = [ModbusSignal(f"r{i}", f"hr:{i}", "uint16") for i in range(500)]
    coils = [ModbusSignal(f"c{i}", f"co:{i}", "bool") for i in range(4000)]
    (group,) = compile_plan([*regs, *coils])
    assert [(r.table, r.start, r.count) for r in group.reads] == [
        (Table.HOLDING, 0, 125), (Table.HOLDING, 125, 125), (Table.HOLDING, 250, 125),
        (Table.HOLDING, 375, 125), (Table.COIL, 0, 2000), (Table.COIL, 2000, 2000),
    ]
    # A float32 at the boundary is never cut in half.
    edge = [ModbusSignal("a", "hr:0", "uint16"), ModbusSignal("f", "hr:124", "float32")]
    assert [(r.start, r.count) for r in compile_plan(edge)[0].reads] == [(0, 1), (124, 2)]
    # Gaps: bridged up to max_gap, split beyond; bits of one register share a read.
    spaced = [ModbusSignal("a", "hr:0"), ModbusSignal("b", "hr:11"), ModbusSignal("c", "hr:30"),
              ModbusSignal("d", "hr:30.1", "bool"), ModbusSignal("e", "hr:30.9", "bool")]
    assert [(r.start, r.count) for r in compile_plan(spaced, max_gap=10)[0].reads] == [
        (0, 12), (30, 1)]
    assert len(compile_plan(spaced, max_gap=0)[0].reads) == 3


def test_split_cuts_at_the_widest_gap_and_halves_without_gaps() -> None:
    def points(*addresses: int) -> tuple[Point, ...]:
        return tuple(parse_signal(ModbusSignal(f"p{a}", f"hr:{a}")) for a in addresses)

    (read,) = merge_reads(points(0, 1, 2, 20, 21), max_gap=30)
    assert [(r.start, r.count) for r in split_read(read)] == [(0, 3), (20, 2)]
    dense = Read(Table.HOLDING, 0, 4, points(0, 1, 2, 3))
    assert [(r.start, r.count) for r in split_read(dense)] == [(0, 2), (2, 2)]
    single = Read(Table.HOLDING, 5, 1, points(5))
    assert split_read(single) == [single]


def _random_signals(rng: random.Random, table: str, count: int) -> list[ModbusSignal]:
    """Signals of every kind at random (often overlapping) addresses of one table."""
    signals: list[ModbusSignal] = []
    for i in range(count):
        address = rng.randrange(0, 60)
        if table in ("co", "di"):
            signals.append(ModbusSignal(f"s{i}", f"{table}:{address}", "bool"))
            continue
        kind = rng.choice([*NUMERIC_TYPES, "uint16", "uint16", "string(5)", "bit", "scaled"])
        if kind == "bit":
            signals.append(ModbusSignal(f"s{i}", f"{table}:{address}.{rng.randrange(16)}",
                                        "bool"))
        elif kind == "scaled":
            signals.append(ModbusSignal(f"s{i}", f"{table}:{address}", "int16", scale=0.1,
                                        offset=-3))
        else:
            signals.append(ModbusSignal(
                f"s{i}", f"{table}:{address}", kind,
                byte_order=rng.choice(["big", "big", "little"]),
                word_order=rng.choice(["big", "big", "little"])))
    return signals


@pytest.mark.parametrize("seed", range(80))
def test_a_read_decodes_in_one_go_exactly_as_point_by_point(seed: int) -> None:
    rng = random.Random(seed)
    table = rng.choice(["hr", "ir", "co", "di"])
    signals = _random_signals(rng, table, rng.choice([1, 2, 3, 8, 40]))
    if rng.random() < 0.3:  # the common case: plain uint16, dense or with gaps
        step = rng.choice([1, 1, 3])
        signals = [ModbusSignal(f"u{a}", f"hr:{a}") for a in range(0, 40 * step, step)]
    for group in compile_plan(signals, max_gap=rng.choice([0, 4, 60])):
        for read in group.reads:
            for points in (read.points, tuple(reversed(read.points))):  # any point order
                shuffled = Read(read.table, read.start, read.count, points)
                if read.table.is_bits:
                    values: list[int] | list[bool] = [rng.random() < 0.5
                                                      for _ in range(read.count + 7)]
                else:
                    values = [rng.randrange(0x10000) for _ in range(read.count)]
                expected = [p.decode(values, p.address - read.start) for p in points]
                got = list(shuffled.decode_all(values))
                assert shuffled.signals == tuple(p.signal for p in points)
                # NaN != NaN: compare floats by their bits
                assert [struct.pack(">d", v) if isinstance(v, float) else v for v in got] == [
                    struct.pack(">d", v) if isinstance(v, float) else v for v in expected]
                assert [type(v) for v in got] == [type(v) for v in expected]
