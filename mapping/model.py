"""The mapping file, version 1, as pydantic models (`extra="forbid"`: a typo is an error).

Durations are strings with a unit (`20ms`, `1s`, `5m`); a bare number is refused so that nobody
has to guess the unit.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from mapping.expr import SIGNAL_NAME

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration with a unit like '500ms' or '2s', got {value!r}")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"expected a duration with a unit like '500ms' or '2s', got {value!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["500ms", "2s"]}),
]
SignalName = Annotated[str, Field(pattern=f"^{SIGNAL_NAME}$")]
Id = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plant(_Strict):
    """Where this line sits in the ISA-95 hierarchy; goes into every packet's equipment path."""

    site: Id
    area: Id | None = None
    line: Id | None = None
    timezone: str = Field(default="UTC", description="IANA zone for the packets' tzOffset")


class ModbusTcpSource(_Strict):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 1.0


Source = ModbusTcpSource


class Signal(_Strict):
    """One tag on one source."""

    source: Id
    address: str = Field(description="Modbus: hr:N, ir:N, co:N or di:N")
    type: Literal["bool", "int16", "uint16", "int32", "uint32"] = "uint16"
    interval: Duration = 1.0
    unit: str | None = None


class OperationRef(_Strict):
    id: str = Field(min_length=1, max_length=128)
    name: str | None = None


class EquipmentRef(_Strict):
    """The station's place below the plant's line; `path` overrides the derived one."""

    cell: Id | None = None
    path: str | None = None
    level: str = "WorkCell"


class OrderContext(_Strict):
    """Where the station learns its current work order and planned quantity."""

    signal: SignalName
    format: str = Field(default="{value}", description="e.g. 'WO-{value}'")
    planned: SignalName | int | None = None


class Counter(_Strict):
    signal: SignalName
    bits: Literal[16, 32, 64] = 32
    max_step: int = Field(
        default=1000,
        ge=1,
        description="a larger jump between two readings is a preset, not production",
    )


class Counters(_Strict):
    good: Counter
    scrap: Counter | None = None


class Progress(_Strict):
    every: int | None = Field(default=None, ge=1, description="a progress packet every N good")


class ParamSpec(_Strict):
    signal: SignalName
    class_: Literal["public", "partner", "restricted"] = Field(alias="class")
    uom: str | None = None


class Station(_Strict):
    """One key operation on one station."""

    operation: OperationRef
    equipment: EquipmentRef = EquipmentRef()
    order: OrderContext
    start: str = Field(description="trigger expression, e.g. rising(press.busy)")
    counters: Counters
    progress: Progress = Progress()
    params: dict[str, ParamSpec] = {}


class MappingFile(_Strict):
    version: Literal[1]
    plant: Plant
    sources: dict[Id, Source]
    signals: dict[SignalName, Signal]
    stations: dict[Id, Station]
