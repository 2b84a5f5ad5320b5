"""The mapping file, version 1, as pydantic models (`extra="forbid"`: a typo is an error).

Durations are strings with a unit (`20ms`, `1s`, `5m`); a bare number is refused so that nobody
has to guess the unit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mapping.sources import Signal, Source
from mapping.types import Id, SignalName, Strict


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
    level: str = "WorkCell"


class OrderContext(Strict):
    """Where the station learns its current work order and planned quantity."""

    signal: SignalName
    format: str = Field(default="{value}", description="e.g. 'WO-{value}'")
    planned: SignalName | int | None = None


class Counter(Strict):
    signal: SignalName
    bits: Literal[16, 32, 64] = 32
    max_step: int = Field(
        default=1000,
        ge=1,
        description="a larger jump between two readings is a preset, not production",
    )


class Counters(Strict):
    good: Counter
    scrap: Counter | None = None


class Progress(Strict):
    every: int | None = Field(default=None, ge=1, description="a progress packet every N good")


class ParamSpec(Strict):
    signal: SignalName
    class_: Literal["public", "partner", "restricted"] = Field(alias="class")
    uom: str | None = None


class Station(Strict):
    """One key operation on one station."""

    operation: OperationRef
    equipment: EquipmentRef = EquipmentRef()
    order: OrderContext
    start: str = Field(description="trigger expression, e.g. rising(press.busy)")
    counters: Counters
    progress: Progress = Progress()
    params: dict[str, ParamSpec] = {}


class MappingFile(Strict):
    version: Literal[1]
    plant: Plant
    sources: dict[Id, Source]
    signals: dict[SignalName, Signal]
    stations: dict[Id, Station]
