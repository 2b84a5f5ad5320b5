"""The engine's snapshot and restore: a restarted engine continues the run it was in.

The snapshot goes through JSON each time, as it does through the outbox file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from common import yamlsrc
from drivers.base import Quality, Sample, SampleValue
from mapping.engine import CompiledMapping, Engine
from mapping.load import compile_document, load_mapping
from mapping.replay import sample_from_json
from mapping.snapshot import SnapshotError
from sync import packet as pk

T0 = 1_795_154_400.0
CASES = Path(__file__).resolve().parent / "mapping_cases"
GOLDEN = sorted(p for p in CASES.iterdir() if (p / "expected.jsonl").exists())

PRESS = """\
version: 1
plant: {site: plant1}
sources:
  io: {protocol: modbus_tcp, host: 127.0.0.1}
signals:
  busy:    {source: io, address: "co:0"}
  status:  {source: io, address: "hr:1"}
  order:   {source: io, address: "hr:2"}
  good:    {source: io, address: "hr:3"}
  planned: {source: io, address: "hr:4"}
  load:    {source: io, address: "hr:5"}
stations:
  s1:
    operation: {id: OP10}
    order: {signal: order, format: "WO-{value}", planned: planned}
    start: rising(busy)
    pause: {when: status == 4, resume: status == 3}
    counters:
      good: {signal: good, bits: 16}
    progress: {every: 5}
    alarms:
      overload:
        when: {when: load > 100, for: 10s}
        severity: major
"""


def _compile(text: str) -> CompiledMapping:
    return compile_document(yamlsrc.load(text, "m.yaml"))


def _through_json(engine: Engine) -> Any:
    return json.loads(json.dumps(engine.snapshot(), allow_nan=False))


class Line:
    """Samples at given seconds, ticks on a 0.1 s grid between them; `restart` replaces the
    engine by a fresh one restored from the old one's snapshot."""

    def __init__(self, text: str = PRESS) -> None:
        self.engine = Engine(_compile(text))
        self.packets: list[pk.Draft] = []
        self.now = 0.0
        self.shift = 0.0  # a restart may come back on another monotonic clock
        self.notes: list[str] = []

    def at(self, t: float, signal: str, value: SampleValue) -> None:
        self.until(t)
        self.packets += self.engine.step(
            Sample(signal, value, Quality.GOOD, T0 + t, t + self.shift))

    def until(self, t: float) -> None:
        tick = math.floor(self.now * 10 + 1e-9) + 1
        while tick / 10 < t:
            self.packets += self.engine.tick(tick / 10 + self.shift, T0 + tick / 10)
            tick += 1
        self.now = t

    def restart(self, at: float, *, text: str = PRESS, shift: float = 0.0) -> None:
        """The gateway stopped at its last sample and comes back at `at` (seconds)."""
        saved = _through_json(self.engine)
        self.shift = shift
        self.now = at
        self.engine = Engine(_compile(text))
        self.notes = self.engine.restore(saved, at + shift)

    def types(self) -> list[str]:
        return [p.type.removeprefix("keyop.") for p in self.packets]


def _running(line: Line, good: int = 100) -> None:
    line.at(0, "order", 7)
    line.at(0, "planned", 20)
    line.at(0, "good", good)
    line.at(0, "status", 3)
    line.at(0, "load", 0)
    line.at(0, "busy", False)
    line.at(1, "busy", True)


def test_a_restart_mid_run_continues_it_and_counts_the_parts_made_while_down() -> None:
    line = Line()
    _running(line)
    line.at(2, "good", 103)
    line.restart(10, shift=5_000.0)  # another boot: another monotonic clock
    line.at(10, "busy", True)
    line.at(10, "good", 108)  # 5 parts while the gateway was down
    line.at(11, "good", 120)
    assert line.types() == ["operation.started", "operation.progress", "operation.completed"]
    runs = {p.data["runId"] for p in line.packets}
    assert runs == {"WO-7.OP10.s1.1"}
    assert line.packets[1].data["quantities"]["good"] == 8
    assert line.packets[-1].data["quantities"]["good"] == 20
    assert line.notes == []


def test_a_restart_does_not_start_a_second_run_on_a_level_that_still_holds() -> None:
    line = Line()
    _running(line)
    line.restart(3)
    line.at(3, "busy", True)
    line.at(4, "busy", False)
    line.at(5, "busy", True)  # a real new rising edge: the run is still active, no new start
    assert line.types() == ["operation.started"]


def test_restore_mid_pause_resumes_on_the_resume_condition_only() -> None:
    line = Line()
    _running(line)
    line.at(2, "status", 4)
    line.restart(5)
    line.at(5, "status", 4)
    line.at(6, "status", 1)  # the pause condition stops holding: not a resume
    line.at(7, "status", 3)
    assert line.types() == ["operation.started", "operation.paused", "operation.resumed"]
    assert line.engine.states["s1"].run is not None
    assert line.engine.states["s1"].run.state == "Running"


def test_restore_mid_hold_keeps_the_remaining_hold_time() -> None:
    line = Line()
    _running(line)
    line.at(2, "load", 150)  # the hold starts: 10 s
    line.at(6, "load", 151)
    line.restart(100, shift=7.0)  # down for 94 s: that time does not count towards the hold
    line.at(100, "load", 152)
    line.until(105.9)
    assert "station.alarm" not in line.types()
    line.until(106.2)
    alarms = [p for p in line.packets if p.type == "keyop.station.alarm"]
    assert len(alarms) == 1
    assert alarms[0].data["alarm"]["code"] == "overload"
    assert alarms[0].time == pytest.approx(T0 + 106.0)  # 4 s held before, 6 s after


def test_a_counter_reset_after_a_restart_is_production_not_a_new_run() -> None:
    line = Line()
    _running(line, good=60_000)
    line.at(2, "good", 60_002)
    line.restart(4)
    line.at(4, "good", 3)  # the counter was reset to 0 while down; 3 parts since
    line.at(5, "good", 18)
    assert line.types() == ["operation.started", "operation.progress", "operation.completed"]
    assert line.packets[-1].data["quantities"]["good"] == 20
    assert {p.data["runId"] for p in line.packets} == {"WO-7.OP10.s1.1"}


def test_restore_across_a_changed_mapping_keeps_what_matches() -> None:
    line = Line(PRESS.replace("  s1:", "  s1:\n    equipment: {cell: c1}")
                + PRESS[PRESS.index("  s1:"):].replace("s1:", "old:", 1))
    _running(line)
    line.at(2, "load", 150)
    changed = (PRESS.replace("bits: 16", "bits: 32").replace("load > 100", "load > 120")
               + PRESS[PRESS.index("  s1:"):].replace("s1:", "new:", 1))
    line.restart(3, text=changed)
    assert sorted(line.notes) == [
        "station 'new' is new: it starts idle",
        "station 'old' is not in the mapping any more: its state was dropped",
        "station 's1': the good counter changed: its next reading is a new baseline",
        "station 's1': trigger 'alarm:overload' changed or went: it starts fresh",
    ]
    run = line.engine.states["s1"].run
    assert run is not None and run.run_id == "WO-7.OP10.s1.1"
    line.at(3, "good", 500)  # a new baseline, not 400 parts
    line.at(4, "good", 505)
    assert line.packets[-1].type == "keyop.operation.progress"
    assert line.packets[-1].data["quantities"]["good"] == 5


def test_a_changed_operation_drops_the_station_state() -> None:
    line = Line()
    _running(line)
    line.restart(3, text=PRESS.replace("id: OP10", "id: OP20"))
    assert line.notes == ["station 's1': its operation changed from 'OP10' to 'OP20': its "
                          "state was dropped"]
    assert line.engine.states["s1"].run is None


def test_a_reloaded_engine_snapshots_from_where_its_predecessor_was() -> None:
    line = Line()
    _running(line)
    line.at(2, "load", 150)
    reloaded = Engine(_compile(PRESS), previous=line.engine)  # s1 unchanged: kept
    saved = _through_json(reloaded)
    assert saved["at"] == 2.0
    assert saved["stations"]["s1"]["triggers"]["alarm:overload"]["deadline"] == 10.0


@pytest.mark.parametrize("damage", [
    lambda s: [s],
    lambda s: {**s, "version": 99},
    lambda s: {**s, "stations": "nothing"},
    lambda s: {**s, "stations": {"s1": {**s["stations"]["s1"], "runs_started": -1}}},
    lambda s: {**s, "stations": {"s1": {**s["stations"]["s1"],
                                        "run": {**s["stations"]["s1"]["run"], "good": "7"}}}},
    lambda s: {**s, "stations": {"s1": {**s["stations"]["s1"],
                                        "run": {**s["stations"]["s1"]["run"], "state": "X"}}}},
    lambda s: {**s, "stations": {"s1": {**s["stations"]["s1"], "triggers": {"start": 1}}}},
])
def test_a_corrupt_snapshot_is_refused_and_leaves_the_engine_untouched(damage: Any) -> None:
    line = Line()
    _running(line)
    saved = damage(_through_json(line.engine))
    fresh = Engine(_compile(PRESS))
    with pytest.raises(SnapshotError) as refused:
        fresh.restore(saved, 5.0)
    assert str(refused.value)
    assert fresh.states["s1"].run is None and fresh.states["s1"].order is None
    assert fresh.values == {}


def test_a_message_names_the_field() -> None:
    line = Line()
    _running(line)
    saved = _through_json(line.engine)
    saved["stations"]["s1"]["run"]["good"] = "7"
    with pytest.raises(SnapshotError, match=r"^stations\.s1\.run\.good: expected int"):
        Engine(_compile(PRESS)).restore(saved, 5.0)


# -- every golden story, restarted after each of its samples --------------------------------


def _events(mapping: CompiledMapping, case: Path) -> list[Sample | tuple[float, float]]:
    """The replay's samples and ticks (as `mapping.replay` runs them), in order."""
    lines = (case / "samples.jsonl").read_text().splitlines()
    samples = [sample_from_json(json.loads(line)) for line in lines if line.strip()]
    out: list[Sample | tuple[float, float]] = []
    last: Sample | None = None
    for sample in samples:
        if last is not None:
            steps = 1
            while (offset := steps * 0.1) + last.monotonic < sample.monotonic:
                out.append((last.monotonic + offset, last.time + offset))
                steps += 1
        out.append(sample)
        last = sample
    return out


def _run(engine: Engine, events: list[Sample | tuple[float, float]]) -> list[pk.Draft]:
    out: list[pk.Draft] = []
    for event in events:
        out += engine.tick(*event) if isinstance(event, tuple) else engine.step(event)
    return out


def _edge_changes_across(engine: Engine, rest: list[Sample | tuple[float, float]]) -> bool:
    """Whether an edge-counted signal's first reading after the split differs from its value
    before: that edge is one a restart cannot see (as after a reconnect)."""
    seen: set[str] = set()
    for event in rest:
        if isinstance(event, Sample) and event.signal in engine.rebase_signals \
                and event.signal not in seen:
            seen.add(event.signal)
            if engine.values.get(event.signal) != event.value:
                return True
    return False


@pytest.mark.parametrize("case", GOLDEN, ids=[p.name for p in GOLDEN])
def test_a_restart_after_any_sample_gives_the_same_story(case: Path) -> None:
    _doc, mapping = load_mapping(case / "mapping.yaml")
    if mapping.filters:
        pytest.skip("filters start afresh after a restart")
    events = _events(mapping, case)
    whole = _run(Engine(mapping), events)
    checked = 0
    for split in range(1, len(events)):
        if not isinstance(events[split - 1], Sample):
            continue
        first = Engine(mapping)
        before = _run(first, events[:split])
        if _edge_changes_across(first, events[split:]):
            continue
        second = Engine(mapping)
        assert second.restore(_through_json(first), first.now) == []
        after = _run(second, events[split:])
        assert [(d.type, d.time, d.data) for d in before + after] == [
            (d.type, d.time, d.data) for d in whole], f"restart after event {split}"
        checked += 1
    assert checked >= 1
