"""The mapping file, version 1, as pydantic models (`extra="forbid"`: a typo is an error).

Durations are strings with a unit (`20ms`, `1s`, `5m`); a bare number is refused so that nobody
has to guess the unit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from mapping.sources import Signal, Source
from mapping.types import Duration, Id, SignalName, Strict

Severity = Literal["info", "warning", "minor", "major", "critical"]
# ISA-95 (IEC 62264) equipment hierarchy levels.
EquipmentLevel = Literal["Enterprise", "Site", "Area", "WorkCenter", "ProductionLine",
                         "ProcessCell", "ProductionUnit", "StorageZone", "WorkCell", "Unit",
                         "WorkUnit", "StorageUnit", "EquipmentModule", "ControlModule"]


class Plant(Strict):
    """Where this line sits in the ISA-95 hierarchy; goes into every packet's equipment path."""

    site: Id
    area: Id | None = None
    line: Id | None = None
    timezone: str = Field(default="UTC", description="IANA zone for the packets' tzOffset")


class OperationRef(Strict):
    id: str = Field(min_length=1, max_length=128)
    name: str | None = None


class EquipmentRef(Strict):
    """The station's place below the plant's line; `path` overrides the derived one."""

    cell: Id | None = None
    path: str | None = None
    level: EquipmentLevel = "WorkCell"


class OrderContext(Strict):
    """Where the station learns its current work order and planned quantity.

    A numeric or text signal: `format` builds the order id from the value (`WO-{value}`); for
    scanned codes `pattern` (a regular expression) must match, and its group `order` (or the
    whole match) becomes the value given to `format`; a group `planned` in the pattern gives
    the planned quantity when `planned` is not set here; a group `operation` names the operation
    the traveller is for: a scan for another operation than the station's raises the alarm
    `wrong_traveller` and leaves the order context as it was.
    """

    signal: SignalName
    format: str = Field(default="{value}", description="e.g. 'WO-{value}'")
    pattern: str | None = Field(default=None, description=r"e.g. 'WO-(?P<order>\d+)'")
    planned: SignalName | int | None = Field(
        default=None, description="a signal giving the planned quantity, or a fixed number"
    )


class TriggerSpec(Strict):
    """A condition with a hold time, or an analog threshold with hysteresis.

    `when` is an expression (`rising(x)`, `x > 3 and not y`); `for` requires it to stay true
    that long. Or `signal` with `above` and `release_below` (or `below` and `release_above`):
    on past the first threshold, off only past the second, so noise near one threshold does
    not chatter.
    """

    when: str | None = None
    hold: Duration | None = Field(default=None, alias="for")
    signal: SignalName | None = None
    above: float | None = None
    release_below: float | None = None
    below: float | None = None
    release_above: float | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerSpec:
        analog = self.signal is not None
        if analog == (self.when is not None):
            raise ValueError("give either `when` (an expression) or `signal` with thresholds")
        if analog:
            up = self.above is not None and self.release_below is not None
            down = self.below is not None and self.release_above is not None
            if up == down:
                raise ValueError(
                    "a threshold trigger needs `above` with `release_below`, "
                    "or `below` with `release_above`"
                )
            if up and not self.release_below <= self.above:  # type: ignore[operator]
                raise ValueError("`release_below` must not be above `above`")
            if down and not self.release_above >= self.below:  # type: ignore[operator]
                raise ValueError("`release_above` must not be below `below`")
        elif any(v is not None for v in (self.above, self.below, self.release_below,
                                          self.release_above)):
            raise ValueError("thresholds go with `signal`, not with `when`")
        return self


Trigger = str | TriggerSpec


class PauseSpec(Strict):
    """Paused while `when` holds (after its hold time); resumed when it ends, or, with
    `resume`, only when that trigger fires (the end of `when` alone then resumes nothing)."""

    when: Trigger
    resume: Trigger | None = Field(default=None, description="resume only when this fires")
    reason: SignalName | None = Field(default=None, description="signal with a stop reason code")


class Counter(Strict):
    """A part counter: a device counter register (`signal`), or the edges of a trigger
    expression (`count: rising(pedal)`), each edge one part."""

    signal: SignalName | None = Field(default=None, description="a counter register")
    count: str | None = Field(
        default=None, description="edge counting: rising(x), falling(x) or any pulse expression")
    debounce: Duration | None = Field(
        default=None, description="edge counting: an edge this soon after a counted one is bounce")
    bits: Literal[16, 32, 64] = 32
    max_step: int = Field(
        default=1000,
        ge=1,
        description="a larger jump between two readings is a preset, not production",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Counter:
        if (self.signal is None) == (self.count is None):
            raise ValueError("give either `signal` (a counter register) or `count` "
                             "(the edges to count, e.g. rising(pedal))")
        if self.count is not None and self.model_fields_set & {"bits", "max_step"}:
            raise ValueError("`bits` and `max_step` go with a counter register (`signal`), "
                             "not with `count`")
        if self.debounce is not None and self.count is None:
            raise ValueError("`debounce` goes with edge counting (`count`)")
        return self


class Counters(Strict):
    good: Counter
    scrap: Counter | None = None


class Progress(Strict):
    """When `keyop.operation.progress` packets go out; none of the three is on by default."""

    every: int | None = Field(default=None, ge=1, description="a progress packet every N good")
    interval: Duration | None = Field(
        default=None, description="and/or at most every T while quantities change"
    )
    keepalive: Duration | None = Field(
        default=None,
        description="at least every T while running, quantities changed or not (a heartbeat)",
    )


class Stalled(Strict):
    after: Duration = Field(description="running without a count this long raises an alarm")
    severity: Severity = "warning"
    while_paused: bool = Field(
        default=False, description="a pause counts towards `after` too (default: it does not)")


class AlarmSpec(Strict):
    when: Trigger
    severity: Severity = "warning"
    text: str | None = None


class ParamSpec(Strict):
    signal: SignalName
    class_: Literal["public", "partner", "restricted", "local"] = Field(
        alias="class", description="who may see it; `local` values never leave the gateway")
    uom: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Station(Strict):
    """One key operation on one station."""

    operation: OperationRef
    equipment: EquipmentRef = EquipmentRef()
    order: OrderContext
    start: Trigger = Field(description="trigger, e.g. rising(press.busy)")
    complete: Trigger | None = Field(
        default=None, description="completes the run (besides reaching the planned quantity)"
    )
    abort: Trigger | None = None
    pause: PauseSpec | None = None
    counters: Counters | None = Field(
        default=None, description="device part counters (none: a run counts nothing)"
    )
    progress: Progress = Progress()
    stalled: Stalled | None = None
    alarms: dict[Id, AlarmSpec] = {}
    params: dict[str, ParamSpec] = {}


class MaterialPoint(Strict):
    """Where material is received, consumed or produced, as a tag reader or scanner sees it.

    Each matching read becomes a `keyop.material.<use>` packet with its EPCIS 2.0 ObjectEvent.
    """

    signal: SignalName
    use: Literal["Received", "Consumed", "Produced"] = "Received"
    on: Literal["arrival", "read", "departure"] = Field(
        default="arrival", description="which tag event counts (barcode scans are reads)"
    )
    equipment: EquipmentRef = EquipmentRef()
    biz_step: str = Field(default="receiving", description="EPCIS business step (CBV name)")
    disposition: str = Field(default="in_progress", description="EPCIS disposition (CBV)")


class MappingFile(Strict):
    version: Literal[1]
    plant: Plant
    sources: dict[Id, Source]
    signals: dict[SignalName, Signal]
    stations: dict[Id, Station]
    materials: dict[Id, MaterialPoint] = {}
