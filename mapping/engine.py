"""The mapping engine: samples in, packet drafts out. Pure: no I/O, no clock of its own.

Time comes with each sample, so replaying a recording gives the same packets every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from drivers.base import Sample, Value
from mapping.expr import Event, Expression
from mapping.model import Counter, MappingFile, Station
from sync.packet import Draft

# A gateway clock before this instant has not been set (the "1970 after boot" failure).
EARLIEST_TRUSTED_TIME = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
PRIORITY_TELEMETRY = 0
PRIORITY_KEY_EVENT = 1


@dataclass(slots=True)
class CounterTrack:
    """Turns raw device counter readings into non-negative increments.

    A reading below the last one is a rollover when the wrapped distance is small (at most
    `max_step`), otherwise a reset of the device counter: then the new reading itself is what
    was produced since the reset. A forward jump beyond `max_step` is a preset, not production.
    """

    bits: int
    max_step: int
    last: int | None = None

    def advance(self, raw: int) -> int:
        previous, self.last = self.last, raw
        if previous is None or raw == previous:
            return 0
        if raw > previous:
            step = raw - previous
            return step if step <= self.max_step else 0
        wrapped = (raw - previous) % (1 << self.bits)
        if wrapped <= self.max_step:
            return wrapped
        return raw if raw <= self.max_step else 0


@dataclass(slots=True)
class Run:
    """One execution of a work order's operation on this station."""

    run_id: str
    work_order: str
    planned: int | None
    good: int = 0
    scrap: int = 0
    state: str = "Running"


@dataclass(slots=True)
class StationState:
    order: str | None = None
    run: Run | None = None
    runs_started: int = 0
    good: CounterTrack | None = None
    scrap: CounterTrack | None = None


@dataclass(frozen=True, slots=True)
class SignalOrigin:
    protocol: str
    device: str
    ref: str


@dataclass(frozen=True)
class CompiledStation:
    id: str
    spec: Station
    equipment_path: str
    start: Expression
    signals: frozenset[str]


@dataclass(frozen=True)
class CompiledMapping:
    model: MappingFile
    stations: tuple[CompiledStation, ...]
    origins: dict[str, SignalOrigin]
    timezone: ZoneInfo

    def stations_for(self) -> dict[str, tuple[CompiledStation, ...]]:
        index: dict[str, list[CompiledStation]] = {}
        for station in self.stations:
            for name in station.signals:
                index.setdefault(name, []).append(station)
        return {name: tuple(found) for name, found in index.items()}


def _new_track(counter: Counter | None) -> CounterTrack | None:
    return CounterTrack(counter.bits, counter.max_step) if counter else None


def _as_int(value: Value) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@dataclass
class Engine:
    """Runs every station of a compiled mapping over a stream of samples."""

    mapping: CompiledMapping
    values: dict[str, Value] = field(default_factory=dict)
    states: dict[str, StationState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_signal = self.mapping.stations_for()
        for station in self.mapping.stations:
            counters = station.spec.counters
            self.states.setdefault(
                station.id,
                StationState(good=_new_track(counters.good), scrap=_new_track(counters.scrap)),
            )

    def step(self, sample: Sample) -> list[Draft]:
        """Apply one sample; return the packets it causes, in order."""
        if not sample.good:
            return []  # a bad reading changes nothing; the last good value stands
        previous = self.values.get(sample.signal)
        self.values[sample.signal] = sample.value
        stations = self._by_signal.get(sample.signal)
        if not stations:
            return []
        event = Event(sample.signal, sample.value, previous)
        drafts: list[Draft] = []
        for station in stations:
            _StationStep(self, station, self.states[station.id], sample, event, drafts).run()
        return drafts


class _StationStep:
    """One sample applied to one station: order context, start trigger, counters."""

    def __init__(
        self,
        engine: Engine,
        station: CompiledStation,
        state: StationState,
        sample: Sample,
        event: Event,
        out: list[Draft],
    ) -> None:
        self.engine = engine
        self.station = station
        self.spec = station.spec
        self.state = state
        self.sample = sample
        self.event = event
        self.out = out

    def run(self) -> None:
        spec, name = self.spec, self.sample.signal
        if name == spec.order.signal:
            self._order_changed()
        if name in self.station.start.signals and self.station.start(
            self.engine.values, self.event
        ):
            self._start()
        if name == spec.counters.good.signal and self.state.good is not None:
            self._count_good(self.state.good.advance(_as_int(self.sample.value) or 0))
        if spec.counters.scrap and name == spec.counters.scrap.signal and self.state.scrap:
            self._count_scrap(self.state.scrap.advance(_as_int(self.sample.value) or 0))

    # -- order context -------------------------------------------------------------------------

    def _order_changed(self) -> None:
        value = self.sample.value
        order = (
            None if value in (None, 0, "", False) else self.spec.order.format.format(value=value)
        )
        if order == self.state.order:
            return
        run = self.state.run
        if run is not None and run.state in ("Running", "Paused") and run.work_order != order:
            self._emit(
                "keyop.operation.aborted",
                run,
                state="Aborted",
                reason={"code": "order_changed", "text": f"order context became {order}"},
            )
            run.state = "Aborted"
        self.state.order = order

    def _planned(self) -> int | None:
        planned = self.spec.order.planned
        if isinstance(planned, int) or planned is None:
            return planned
        return _as_int(self.engine.values.get(planned))

    # -- run lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        if self.state.order is None:
            return  # no order context yet: nothing to report progress against
        run = self.state.run
        if run is not None and run.state in ("Running", "Paused"):
            return
        self.state.runs_started += 1
        run = Run(
            run_id=f"{self.state.order}.{self.spec.operation.id}.{self.station.id}."
            f"{self.state.runs_started}",
            work_order=self.state.order,
            planned=self._planned(),
        )
        self.state.run = run
        self._emit("keyop.operation.started", run, state="Running", previous="Ready")

    def _count_good(self, delta: int) -> None:
        run = self.state.run
        if delta <= 0 or run is None or run.state != "Running":
            return
        before = run.good
        run.good += delta
        if run.planned is not None and run.good >= run.planned:
            run.state = "Completed"
            self._emit(
                "keyop.operation.completed", run, state="Completed", previous="Running",
                delta={"good": delta},
            )
            return
        every = self.spec.progress.every
        if every and run.good // every > before // every:
            self._emit(
                "keyop.operation.progress", run, state="Running", delta={"good": delta},
                priority=PRIORITY_TELEMETRY,
            )

    def _count_scrap(self, delta: int) -> None:
        run = self.state.run
        if delta <= 0 or run is None or run.state != "Running":
            return
        run.scrap += delta
        self._emit("keyop.operation.scrapped", run, state="Running", delta={"scrap": delta})

    # -- packet building -----------------------------------------------------------------------

    def _emit(
        self,
        type_: str,
        run: Run,
        *,
        state: str,
        previous: str | None = None,
        reason: dict[str, str] | None = None,
        delta: dict[str, int] | None = None,
        priority: int = PRIORITY_KEY_EVENT,
    ) -> None:
        mapping = self.engine.mapping
        when = self.sample.time
        state_obj: dict[str, Any] = {"value": state}
        if previous:
            state_obj["previous"] = previous
        if reason:
            state_obj["reason"] = reason
        quantities: dict[str, Any] = {"uom": "C62"}
        if run.planned is not None:
            quantities["planned"] = run.planned
        quantities.update(
            produced=run.good + run.scrap, good=run.good, scrap=run.scrap, rework=0
        )
        data: dict[str, Any] = {
            "kopVersion": "1.0",
            "workOrder": {"id": run.work_order},
            "operation": _drop_none(
                {"id": self.spec.operation.id, "name": self.spec.operation.name}
            ),
            "runId": run.run_id,
            "equipment": {"path": self.station.equipment_path, "level": self.spec.equipment.level},
            "state": state_obj,
            "quantities": quantities,
        }
        if delta:
            data["delta"] = delta
        params = self._params()
        if params:
            data["params"] = params
        data["tzOffset"] = _tz_offset(mapping.timezone, when)
        data["timeQuality"] = "synced" if when >= EARLIEST_TRUSTED_TIME else "unsynced"
        origin = mapping.origins.get(self.sample.signal)
        if origin is not None:
            data["origin"] = {"protocol": origin.protocol, "device": origin.device,
                              "ref": origin.ref}
        subject = f"{run.work_order}/{self.spec.operation.id}"
        self.out.append(Draft(type_, subject, when, data, priority))

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, spec in self.spec.params.items():
            value = self.engine.values.get(spec.signal)
            if value is None:
                continue
            params[name] = _drop_none({"value": value, "uom": spec.uom, "class": spec.class_})
        return params


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _tz_offset(zone: ZoneInfo, when: float) -> str:
    offset = datetime.fromtimestamp(when, tz=zone).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
