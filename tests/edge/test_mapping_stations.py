"""Station constructs one at a time: edge counting, resume, keepalive, stall while paused,
the scanned operation, and the type checks of expressions (no I/O: the engine is pure)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from common import yamlsrc
from drivers.base import Quality, Sample, SampleValue
from mapping.engine import Engine
from mapping.errors import MappingError
from mapping.expr import ExpressionError, compile_expression
from mapping.load import compile_document
from sync import packet as pk

T0 = 1_795_154_400.0
BASE = """\
version: 1
plant: {site: plant1}
sources:
  io: {protocol: modbus_tcp, host: 127.0.0.1}
signals:
  busy:   {source: io, address: "co:0"}
  pedal:  {source: io, address: "di:0"}
  status: {source: io, address: "hr:1"}
  order:  {source: io, address: "hr:2"}
  count:  {source: io, address: "hr:3"}
  text:   {source: io, address: "hr:4", type: string(8)}
stations:
  s1:
    operation: {id: OP10}
    order: {signal: order}
    start: rising(busy)
"""


class Line:
    """Feeds samples at given seconds and lets time pass between them, as the gateway does."""

    def __init__(self, station: str) -> None:
        self.engine = Engine(compile_document(yamlsrc.load(BASE + station, "m.yaml")))
        self.packets: list[pk.Draft] = []
        self.now = 0.0

    def at(self, t: float, signal: str, value: SampleValue,
           quality: Quality = Quality.GOOD) -> None:
        self.until(t)
        self.packets += self.engine.step(Sample(signal, value, quality, T0 + t, t))

    def until(self, t: float) -> None:
        """Ticks on their own 0.1 s grid, as the gateway's ticker runs beside the samples."""
        tick = math.floor(self.now * 10 + 1e-9) + 1
        while tick / 10 < t:
            self.packets += self.engine.tick(tick / 10, T0 + tick / 10)
            tick += 1
        self.now = t

    def begin(self) -> None:
        for signal, value in (("busy", False), ("pedal", False), ("status", 0),
                              ("count", 0), ("order", 7)):
            self.at(0.0, signal, value)
        self.at(1.0, "busy", True)

    def kinds(self) -> list[str]:
        return [p.type.rsplit(".", 1)[1] for p in self.packets]

    def last(self, kind: str) -> dict[str, Any]:
        return next(p.data for p in reversed(self.packets) if p.type.endswith(kind))

    def times(self, kind: str) -> list[float]:
        return [round(p.time - T0, 6) for p in self.packets if p.type.endswith(kind)]


def test_edges_count_parts_and_bounce_is_ignored() -> None:
    line = Line("    counters:\n      good: {count: rising(pedal), debounce: 300ms}\n")
    line.begin()
    for t, value in ((2.0, True), (2.1, False), (2.2, True), (2.25, False), (3.0, True)):
        line.at(t, "pedal", value)
    assert line.last("started") and line.engine.states["s1"].run is not None
    assert line.engine.states["s1"].run.good == 2  # 2.0 and 3.0; the edge at 2.2 bounced


def test_a_reconnect_counts_no_spurious_edge_and_counting_goes_on() -> None:
    line = Line("    counters:\n      good: {count: rising(pedal)}\n")
    line.begin()
    line.at(2.0, "pedal", None, Quality.BAD)  # the I/O module's link is lost
    line.at(3.0, "pedal", True)  # back, with the pedal held: a baseline, not an edge
    run = line.engine.states["s1"].run
    assert run is not None and run.good == 0
    line.at(4.0, "pedal", False)
    line.at(5.0, "pedal", True)
    assert run.good == 1


def test_a_bad_reading_of_a_register_counter_keeps_its_value() -> None:
    line = Line("    counters:\n      good: {signal: count, bits: 16}\n")
    line.begin()
    line.at(2.0, "count", 3)
    line.at(3.0, "count", None, Quality.BAD)
    line.at(4.0, "count", 5)
    run = line.engine.states["s1"].run
    assert run is not None and run.good == 5  # 0 -> 3 -> (bad) -> 5: nothing lost


def test_resume_waits_for_its_own_trigger() -> None:
    line = Line("    pause: {when: status == 4, resume: status == 3}\n")
    line.begin()
    line.at(2.0, "status", 4)
    line.at(3.0, "status", 1)  # the pause condition ends: no resume yet
    assert line.kinds() == ["started", "paused"]
    line.at(4.0, "status", 3)
    assert line.kinds() == ["started", "paused", "resumed"]


def test_without_resume_the_end_of_the_pause_resumes() -> None:
    line = Line("    pause: {when: status == 4}\n")
    line.begin()
    line.at(2.0, "status", 4)
    line.at(3.0, "status", 1)
    assert line.kinds() == ["started", "paused", "resumed"]


def test_keepalive_is_at_least_every_t_and_interval_at_most() -> None:
    line = Line("    counters:\n      good: {signal: count}\n"
                "    progress: {interval: 5s, keepalive: 20s}\n")
    line.begin()
    line.until(30.0)  # nothing counted: keepalive heartbeats at 21 (started at 1)
    assert line.times("progress") == [21.0]
    assert line.last("progress")["delta"] == {"good": 0}
    line.at(31.0, "count", 1)  # interval due since 26: it goes at the count, stamped 31
    line.at(32.0, "count", 2)  # within 5 s of it: waits until 36
    line.until(60.0)  # keepalive again 20 s after the last packet
    assert line.times("progress") == [21.0, 31.0, 36.0, 56.0]
    assert [p.data["quantities"]["good"] for p in line.packets
            if p.type.endswith("progress")] == [0, 1, 2, 2]


def test_a_pause_is_no_stall_unless_configured() -> None:
    for while_paused, alarms in ((False, []), (True, [11.0])):
        line = Line(f"    pause: {{when: status == 4}}\n"
                    f"    stalled: {{after: 10s, while_paused: {str(while_paused).lower()}}}\n")
        line.begin()
        line.at(2.0, "status", 4)
        line.until(30.0)
        line.at(30.0, "status", 0)
        assert line.times("alarm") == alarms


def test_a_traveller_for_another_operation_raises_an_alarm_and_keeps_the_context() -> None:
    station = BASE.replace("order:  {source: io, address: \"hr:2\"}",
                           "order:  {source: io, address: \"hr:5\", type: string(32)}")
    spec = ("    order: {signal: order, pattern: '^WO-(?P<order>\\d+)/(?P<operation>OP\\d+)$',"
            " format: 'WO-{value}'}\n")
    text = station.replace("    order: {signal: order}\n", spec)
    engine = Engine(compile_document(yamlsrc.load(text, "m.yaml")))
    out: list[pk.Draft] = []
    for t, value in ((1.0, "WO-5/OP10"), (2.0, "WO-6/OP20"), (3.0, "WO-6/OP10")):
        out += engine.step(Sample("order", value, Quality.GOOD, T0 + t, t))
        if t == 2.0:
            assert engine.states["s1"].order == "WO-5"
    alarms = [(p.data["alarm"]["code"], p.data["alarm"]["active"]) for p in out
              if p.type == "keyop.station.alarm"]
    assert alarms == [("wrong_traveller", True), ("wrong_traveller", False)]
    assert engine.states["s1"].order == "WO-6"
    assert [p.data["scan"]["code"] for p in out if p.type == "keyop.station.context"] == [
        "WO-5/OP10", "WO-6/OP10"]


@pytest.mark.parametrize(("text", "message", "offset"), [
    ("status == 'running'", "compares 'status' (a number) with text 'running'", 10),
    ("rising(status)", "rising() needs a bool signal, 'status' is a number", 7),
    ("text > 3", "> needs numbers, 'text' (text) is not one", 0),
    ("departure(busy)", "departure() needs a scan signal, 'busy' is a bool", 10),
])
def test_expressions_are_type_checked(text: str, message: str, offset: int) -> None:
    kinds = {"status": "number", "text": "text", "busy": "bool"}
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, kinds, kinds)
    assert str(caught.value).startswith(message) and caught.value.offset == offset


@pytest.mark.parametrize(("text", "warned"), [
    ("status == 1 and status == 4", True),
    ("(status == 1) and (busy and status == 4)", True),
    ("status == 1 and status == 1", False),
    ("status == 1 or status == 4", False),
    ("busy == 1 and busy == true", False),  # 1 == True: the same value
    ("status == 1 and not status == 4", False),
])
def test_a_conjunction_that_can_never_hold_is_a_warning(text: str, warned: bool) -> None:
    kinds = {"status": "number", "busy": "bool"}
    assert bool(compile_expression(text, kinds, kinds).warnings) == warned


def test_unknown_kinds_are_not_judged() -> None:
    compile_expression("x == 'a' and rising(x) or x > 2", {"x"}, {"x": None})


def test_a_bool_register_counter_suggests_edge_counting() -> None:
    with pytest.raises(MappingError) as caught:
        compile_document(yamlsrc.load(
            BASE + "    counters:\n      good: {signal: pedal}\n", "m.yaml"))
    assert [p.message for p in caught.value.problems] == [
        "stations.s1.counters.good.signal: 'pedal' is a bool, not a counter register: "
        "count its edges with `count: rising(pedal)`"]


def test_a_held_condition_fires_at_the_exact_end_of_its_hold_time() -> None:
    line = Line("    pause: {when: {when: status == 4, for: 45s}}\n")
    line.begin()
    line.at(1.05, "status", 4)
    line.until(50.0)  # the ticks at 46.0 and 46.1 see it; it ended at 46.050
    (paused,) = [p for p in line.packets if p.type.endswith("paused")]
    assert pk.format_time(paused.time).endswith("06:00:46.050Z")
