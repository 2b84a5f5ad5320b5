"""The mapping engine: samples in, packet drafts out. Pure: no I/O, no clock of its own.

Time comes with each sample (`time` for packets, `monotonic` for timers), and `tick` lets the
caller advance time between samples, so replaying a recording gives the same packets every
time. The stations' state machines live in `mapping.station`, material points in
`mapping.materials`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from drivers.base import Quality, Sample
from drivers.base import SampleValue as Value
from mapping import snapshot
from mapping.errors import Problem
from mapping.filters import SignalFilter
from mapping.materials import CompiledMaterialPoint, MaterialRuntime
from mapping.model import MappingFile
from mapping.station import (
    COUNT_GOOD,
    COUNT_SCRAP,
    EARLIEST_TRUSTED_TIME,
    CompiledStation,
    StationRuntime,
    StationState,
    ValueCheck,
    tz_offset,
)
from mapping.triggers import NEVER
from sync.packet import Draft

_EMPTY: list[Draft] = []  # returned for "no packets"; callers never mutate it
_GOOD = Quality.GOOD


@dataclass(frozen=True, slots=True)
class SignalOrigin:
    protocol: str
    device: str
    ref: str


@dataclass(frozen=True)
class CompiledMapping:
    model: MappingFile
    stations: tuple[CompiledStation, ...]
    origins: dict[str, SignalOrigin]
    timezone: ZoneInfo
    filters: dict[str, SignalFilter] = field(default_factory=dict)
    digest: str = ""
    materials: tuple[CompiledMaterialPoint, ...] = ()
    # What `keyop check` reports but does not refuse (`file:line:col: message` each).
    warnings: tuple[Problem, ...] = field(default=(), compare=False)


class Engine:
    """Runs every station of a compiled mapping over a stream of samples."""

    def __init__(self, mapping: CompiledMapping, previous: Engine | None = None) -> None:
        self.mapping = mapping
        self.values: dict[str, Value] = dict(previous.values) if previous else {}
        self.filters = {name: f.fresh() for name, f in mapping.filters.items()}
        kept = previous._reusable_states(mapping) if previous else {}
        self.stations = [
            StationRuntime(self, station, kept.get(station.id)) for station in mapping.stations
        ]
        handlers: dict[str, list[StationRuntime | MaterialRuntime]] = {}
        for runtime in self.stations:
            for name in runtime.compiled.signals:
                handlers.setdefault(name, []).append(runtime)
        for point in mapping.materials:
            handlers.setdefault(point.spec.signal, []).append(MaterialRuntime(self, point))
        self._handlers = {name: tuple(found) for name, found in handlers.items()}
        checks: dict[str, list[ValueCheck]] = {}
        for runtime in self.stations:
            for name, check in runtime.value_checks():
                checks.setdefault(name, []).append(check)
        self._checks = {name: tuple(found) for name, found in checks.items()}
        # Signals whose edges are counted: after a bad reading (a lost link) the next good one
        # is a new baseline, not an edge, so a reconnect counts no part.
        self.rebase_signals = frozenset(
            name for station in mapping.stations for key, trigger in station.triggers.items()
            if key in (COUNT_GOOD, COUNT_SCRAP) for name in trigger.signals)
        # Why each signal's latest value was refused, while it is; and how many were.
        self.refusals: dict[str, str] = {}
        self.refused = 0
        # The monotonic instant of the latest sample or tick (a reload goes on from it).
        self.now: float = previous.now if previous else 0.0
        self._deadline = NEVER
        for runtime in self.stations:
            self.wake_at(runtime.next_deadline())

    def _reusable_states(self, mapping: CompiledMapping) -> dict[str, StationState]:
        """States of stations whose definition (and place) did not change."""
        old = {runtime.compiled.id: runtime for runtime in self.stations}
        kept = {}
        for station in mapping.stations:
            runtime = old.get(station.id)
            if runtime and runtime.compiled == station:
                kept[station.id] = runtime.state
        return kept

    def common_fields(self, data: dict[str, Any], signal: str, when: float) -> None:
        """The fields every packet carries: plant offset, clock quality, signal origin."""
        mapping = self.mapping
        data["tzOffset"] = tz_offset(mapping.timezone, when)
        data["timeQuality"] = "synced" if when >= EARLIEST_TRUSTED_TIME else "unsynced"
        origin = mapping.origins.get(signal)
        if origin is not None:
            data["origin"] = {"protocol": origin.protocol, "device": origin.device,
                              "ref": origin.ref}

    @property
    def states(self) -> dict[str, StationState]:
        return {runtime.compiled.id: runtime.state for runtime in self.stations}

    def wake_at(self, deadline: float) -> None:
        if deadline < self._deadline:
            self._deadline = deadline

    def refuse(self, signal: str, problem: str) -> str:
        """Record that a value of `signal` could not be used; the reason names the signal."""
        reason = f"signal {signal!r}: {problem}"
        self.refused += 1
        self.refusals[signal] = reason
        return reason

    def _problem(self, name: str, value: Value) -> str | None:
        for check in self._checks[name]:
            problem = check(value)
            if problem is not None:
                return self.refuse(name, problem)
        if self.refusals:
            self.refusals.pop(name, None)
        return None

    def screen(self, sample: Sample) -> Sample:
        """The sample, or a bad one with the reason when its value is one the stations cannot
        use: a count or planned quantity a packet cannot carry (a uint64 register reading
        2^64-1, a negative, NaN or fractional count), an order code that makes an order id
        the hub refuses. `step` screens too; a caller that counts bad samples screens first."""
        if sample.quality is not _GOOD or sample.signal not in self._checks:
            return sample
        reason = self._problem(sample.signal, sample.value)
        if reason is None:
            return sample
        return Sample(sample.signal, sample.value, Quality.BAD, sample.time, sample.monotonic,
                      reason)

    def snapshot(self) -> dict[str, Any]:
        """The state a restart continues from, as a JSON-able dict (`mapping.snapshot`)."""
        return snapshot.take(self)

    def restore(self, data: object, now: float) -> list[str]:
        """Continue from `snapshot()`'s output at monotonic `now`; return notes on what no
        longer matched the mapping; `snapshot.SnapshotError` for a snapshot that is not one."""
        return snapshot.restore(self, data, now)

    def step(self, sample: Sample) -> list[Draft]:
        """Apply one sample; return the packets it causes, in order."""
        self.now = sample.monotonic
        if sample.quality is not _GOOD:
            if sample.signal in self.rebase_signals:
                self.values.pop(sample.signal, None)
            self._counter_lost(sample.signal)
            return _EMPTY  # a bad reading changes nothing else; the last good value stands
        name = sample.signal
        value = sample.value
        if name in self._checks and self._problem(name, value) is not None:
            return _EMPTY  # a value the stations cannot use is a bad reading too
        if self.filters:
            signal_filter = self.filters.get(name)
            if signal_filter is not None:
                value = signal_filter.apply(value)
        values = self.values
        previous = values.get(name)
        values[name] = value
        handlers = self._handlers.get(name)
        if handlers is None:
            if sample.monotonic >= self._deadline:
                return self.tick(sample.monotonic, sample.time)
            return _EMPTY
        out: list[Draft] = []
        for runtime in handlers:
            runtime.on_sample(name, value, previous, sample, out)
        if sample.monotonic >= self._deadline:
            self.tick(sample.monotonic, sample.time, out)
        return out

    def _counter_lost(self, signal: str) -> None:
        """A bad reading of a counter register: its stations note the run it counts for."""
        for runtime in self.stations:
            if signal in (runtime.good_signal, runtime.scrap_signal):
                runtime.counter_lost(signal)

    def tick(self, monotonic: float, time: float, out: list[Draft] | None = None) -> list[Draft]:
        """Let time pass: hold times, stalled alarms and timed progress are due now."""
        drafts = out if out is not None else []
        self.now = monotonic
        if monotonic < self._deadline:
            return drafts
        self._deadline = NEVER
        for runtime in self.stations:
            runtime.on_time(monotonic, time, drafts)
            self.wake_at(runtime.next_deadline())
        return drafts


