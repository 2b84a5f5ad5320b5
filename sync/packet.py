"""The key-operation progress packet v1 (docs/packet.md): its model, limits and text forms.

A packet is a CloudEvents 1.0 event in structured mode. The mapping engine builds a `Draft`
(type, subject, event time, data); the gateway gives it its identity (`id`, `source`,
`sequence`, `sourceepoch`, `recordedtime`) when the outbox commits it. The JSON codec (our
packets to bytes, and hostile bytes to packets) is `sync.packet_codec`; the JSON Schema built
from these models is `sync.packet_schema`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)

SPEC_VERSION: Final = "1.0"
KOP_VERSION: Final = "1.0"
DATA_SCHEMA: Final = "keyop:packet:1"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=utf-8"
MAX_EVENT_BYTES = 64 * 1024
SEQUENCE_DIGITS = 20

# An id (site, gateway, supplier, station, hub): an MQTT username and a topic level, so
# nothing that could widen a subscription or an ACL ('+', '#', '/').
_ID = r"[a-z0-9][a-z0-9-]{0,63}"
ID_PATTERN = rf"^{_ID}$"
SOURCE_PATTERN = rf"^{_ID}/{_ID}$"
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
TIME_PATTERN = (r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?"
                r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$")
SEQUENCE_PATTERN = r"^\d{20}$"

OPERATION_TYPES = frozenset(
    {
        "keyop.operation.started",
        "keyop.operation.progress",
        "keyop.operation.paused",
        "keyop.operation.resumed",
        "keyop.operation.completed",
        "keyop.operation.aborted",
        "keyop.operation.scrapped",
    }
)
EVENT_TYPES = OPERATION_TYPES | frozenset(
    {
        "keyop.quality.passed",
        "keyop.quality.failed",
        "keyop.station.state",
        "keyop.station.alarm",
        "keyop.station.context",
        "keyop.material.received",
        "keyop.material.consumed",
        "keyop.material.produced",
        "keyop.outbox.gap",
        "keyop.alert.delay_risk",
        "keyop.alert.stalled",
        "keyop.assignment.added",
        "keyop.assignment.removed",
    }
)
# Data fields each type family requires beyond the always-required ones.
REQUIRED_BY_PREFIX: dict[str, tuple[str, ...]] = {
    "keyop.operation.": ("workOrder", "operation", "runId", "state", "quantities"),
    "keyop.station.alarm": ("alarm",),
    "keyop.material.": ("epcis",),
    "keyop.station.context": ("scan",),
    "keyop.outbox.gap": ("gap",),
    "keyop.assignment.": ("workOrder", "assignment"),
}
# Every type but these (the hub's assignment events: no station) has an `equipment`.
NO_EQUIPMENT_PREFIX = "keyop.assignment."
# The same, resolved once per type (Packet's validator runs on every packet ingested).
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    type_: (() if type_.startswith(NO_EQUIPMENT_PREFIX) else ("equipment",)) + tuple(
        name
        for prefix, names in REQUIRED_BY_PREFIX.items()
        if type_.startswith(prefix)
        for name in names
    )
    for type_ in EVENT_TYPES
}
# CloudEvents extension attribute the hub sets on an event it appends to a supplier's feed as
# part of a newly assigned order's history (docs/feed.md); never taken from a gateway.
BACKFILL_ATTRIBUTE = "keyopbackfill"


class PacketError(ValueError):
    """A packet that does not satisfy v1; the message names the field and what was expected."""


# What the hub accepts (docs/packet.md, "What the hub refuses"): integers fit the store's
# BIGINT columns, strings their columns, and every other free string has a cap, so nothing
# unbounded is stored and redistributed. Free-form `epcis` and `scan.fields` are bounded by
# MAX_EVENT_BYTES only.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
ORDER_ID_MAX = 128  # workOrder.id, operation.id, customerOrders items (store columns)
PATH_MAX = 512  # equipment.path, subject, runId (store columns)
UOM_MAX = 8  # quantities.uom (op_state.uom), materials uom
TYPE_MAX = 64  # type (packets.type)
NAME_MAX = 128  # names, codes, ids, severities, material and lot ids, part serials
TEXT_MAX = 1024  # reason and alarm texts, param text values, gap reason, origin ref
SCAN_CODE_MAX = 4096  # a GS1 DataMatrix holds up to ~2,300 characters
LIST_MAX = 1000  # parts, materials, epcs
CUSTOMER_ORDERS_MAX = 64
PARAMS_MAX = 256


def _real_time(text: str) -> str:
    """The pattern matched; the text must also name a real instant (no month 13, day 32,
    hour 24, offset beyond 23:59). Every such instant, years 1 to 9999 with an offset, has a
    float timestamp (`parse_time`), so checking the date is enough."""
    try:
        datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"not a real date-time ({error})") from None
    return text


_MAX_SEQUENCE = f"{MAX_INT:0{SEQUENCE_DIGITS}d}"
_ZERO_SEQUENCE = "0" * SEQUENCE_DIGITS


def _sequence_in_range(text: str) -> str:
    # Twenty digits each: text order is numeric order.
    if text == _ZERO_SEQUENCE or text > _MAX_SEQUENCE:
        raise ValueError("sequence must be 1..2^63-1 (sequences start at 1)")
    return text


def param_problem(value: Any) -> str | None:
    """Why a packet cannot carry `value` as a param's value, or None when it can. (The edge
    leaves such a value out rather than make the hub refuse the whole packet.)"""
    kind = type(value)
    if value is None or kind is bool:
        return None
    if kind is int:
        return None if MIN_INT <= value <= MAX_INT else "integer out of range (-2^63..2^63-1)"
    if kind is float:
        if math.isfinite(value):
            return None
        return f"expected a finite number, got {json_kind(value)}"
    if kind is str:
        if len(value) > TEXT_MAX:
            return f"text longer than {TEXT_MAX} characters"
        return "a string holds a NUL character (\\u0000)" if "\x00" in value else None
    return f"expected a JSON boolean, integer, number, string or null, got {json_kind(value)}"


def _param_value(value: Any) -> bool | int | float | str | None:
    problem = param_problem(value)
    if problem is not None:
        raise ValueError(problem)
    checked: bool | int | float | str | None = value  # param_problem checked its type
    return checked


def _text(max_length: int, min_length: int = 0) -> Any:
    return Field(min_length=min_length, max_length=max_length)


Name = Annotated[str, _text(NAME_MAX)]
Text = Annotated[str, _text(TEXT_MAX)]
Uom = Annotated[str, _text(UOM_MAX)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Int64 = Annotated[int, Field(ge=MIN_INT, le=MAX_INT)]
Time = Annotated[str, Field(pattern=TIME_PATTERN), AfterValidator(_real_time)]
Sequence = Annotated[str, Field(pattern=SEQUENCE_PATTERN), AfterValidator(_sequence_in_range)]
OrderId = Annotated[str, _text(ORDER_ID_MAX, 1)]
ParamValue = Annotated[
    bool | int | float | str | None,
    PlainValidator(_param_value, json_schema_input_type=bool | int | float | str | None),
]


class _Model(BaseModel):
    # Consumers ignore unknown fields (minor versions only add optional ones): `validate`
    # drops them. The models forbid them so that a packet without any (the usual case) is
    # known to be canonical as it is, without a re-serialisation. Strict: "5", true or 5.0
    # is no integer, 5 no string.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class WorkOrder(_Model):
    id: OrderId
    erpOrder: Annotated[str, _text(ORDER_ID_MAX)] | None = None
    customerOrders: Annotated[list[OrderId], Field(max_length=CUSTOMER_ORDERS_MAX)] | None = None


class Operation(_Model):
    id: OrderId
    name: Name | None = None


class Equipment(_Model):
    path: Annotated[str, _text(PATH_MAX, 1)]
    id: Name | None = None
    level: Name | None = None


class Reason(_Model):
    code: Name
    text: Text | None = None


class State(_Model):
    value: Literal["Ready", "Running", "Paused", "Completed", "Aborted"]
    previous: Name | None = None
    reason: Reason | None = None


class Quantities(_Model):
    uom: Uom = "C62"
    planned: Count | None = None
    produced: Count
    good: Count
    scrap: Count
    rework: Count = 0

    @model_validator(mode="after")
    def _produced_is_sum(self) -> Quantities:
        if self.produced != self.good + self.scrap + self.rework:
            raise ValueError(
                f"produced ({self.produced}) must equal good + scrap + rework "
                f"({self.good} + {self.scrap} + {self.rework})"
            )
        return self


class Delta(_Model):
    good: Int64 | None = None
    scrap: Int64 | None = None
    rework: Int64 | None = None


class Material(_Model):
    use: Literal["Received", "Consumed", "Produced"]
    materialId: Name | None = None
    lotId: Name | None = None
    epcs: Annotated[list[Annotated[str, _text(PATH_MAX)]], Field(max_length=LIST_MAX)] | None = (
        None)
    quantity: float | None = None
    uom: Uom | None = None


class Part(_Model):
    serial: Annotated[str, _text(NAME_MAX, 1)]
    status: Literal["PASS", "FAIL"]


class Alarm(_Model):
    code: Annotated[str, _text(NAME_MAX, 1)]
    severity: Name
    active: bool
    text: Text | None = None
    # The hub's alerts only: `raised`, `cleared`, or `missed` (a delay risk closed by a
    # completion after the due time).
    status: Literal["raised", "cleared", "missed"] | None = None


class Estimate(_Model):
    """The hub's completion estimate of an operation (alerts)."""

    ratePerHour: float
    completion: Time | None = None
    due: Time | None = None


class Assignment(_Model):
    """An order assigned to (or taken from) a supplier (`keyop.assignment.*`)."""

    due: Time | None = None


class Param(_Model):
    value: ParamValue = None
    uom: Annotated[str, _text(16)] | None = None
    # `class` is a Python keyword, hence the alias (the JSON name is the only one accepted).
    # `local` values stay in the gateway's outbox: the uplink removes them (sync/uplink.py).
    class_: Literal["public", "partner", "restricted", "local"] = Field(alias="class")


class Scan(_Model):
    kind: Literal["barcode", "rfid"]
    code: Annotated[str, _text(SCAN_CODE_MAX)]
    fields: dict[str, str] | None = None


class Gap(_Model):
    fromSequence: Sequence
    toSequence: Sequence
    reason: Text


class Origin(_Model):
    protocol: Annotated[str, _text(32)]
    device: Name | None = None
    ref: Text | None = None


class Data(_Model):
    kopVersion: Literal["1.0"] = KOP_VERSION
    workOrder: WorkOrder | None = None
    operation: Operation | None = None
    runId: Annotated[str, _text(PATH_MAX)] | None = None
    equipment: Equipment | None = None
    state: State | None = None
    quantities: Quantities | None = None
    delta: Delta | None = None
    materials: Annotated[list[Material], Field(max_length=LIST_MAX)] | None = None
    parts: Annotated[list[Part], Field(max_length=LIST_MAX)] | None = None
    alarm: Alarm | None = None
    params: Annotated[dict[Annotated[str, _text(NAME_MAX, 1)], Param],
                      Field(max_length=PARAMS_MAX)] | None = None
    epcis: dict[str, Any] | None = None
    scan: Scan | None = None
    gap: Gap | None = None
    estimate: Estimate | None = None
    assignment: Assignment | None = None
    tzOffset: str = Field(pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$")
    timeQuality: Literal["synced", "unsynced", "estimated"]
    origin: Origin | None = None


class Packet(_Model):
    """A key-operation progress packet (CloudEvents envelope + keyop data)."""

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(pattern=ULID_PATTERN)
    source: str = Field(pattern=SOURCE_PATTERN)
    type: str = Field(max_length=TYPE_MAX)
    subject: str = Field(min_length=1, max_length=PATH_MAX)
    time: Time
    recordedtime: Time
    sequence: Sequence
    sourceepoch: str = Field(pattern=ULID_PATTERN)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Literal["keyop:packet:1"] = DATA_SCHEMA
    data: Data

    @model_validator(mode="after")
    def _type_and_required_data(self) -> Packet:
        required = _REQUIRED_BY_TYPE.get(self.type)
        if required is None:
            raise ValueError(f"type: unknown event type {self.type!r}")
        # Plain dict lookups and a loop: this runs for every packet the hub ingests.
        fields = self.data.__dict__
        for name in required:
            if fields[name] is None:
                missing = ", ".join(f"data.{n}" for n in required if fields[n] is None)
                raise ValueError(f"{missing} required for type {self.type}")
        return self

    @property
    def seq(self) -> int:
        return int(self.sequence)


@dataclass(frozen=True, slots=True)
class Draft:
    """A packet as the mapping engine emits it, before the outbox gives it an identity."""

    type: str
    subject: str
    time: float
    data: dict[str, Any]
    # Outbox priority: key-operation events outrank telemetry when a bound forces eviction.
    priority: int = 1


def format_sequence(seq: int) -> str:
    return f"{seq:0{SEQUENCE_DIGITS}d}"


_LAST_SECOND: tuple[int, str] = (-1, "")


def format_time(epoch_seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as docs/packet.md requires.

    Hot path (every packet): the date-time text of the last second is reused.
    """
    global _LAST_SECOND
    second = math.floor(epoch_seconds)
    micros = round((epoch_seconds - second) * 1e6)  # exactly as datetime rounds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    millis = micros // 1000
    cached_second, text = _LAST_SECOND
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _LAST_SECOND = (second, text)
    return f"{text}.{millis:03d}Z"


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


_JSON_KINDS = {type(None): "null", bool: "boolean", int: "integer", float: "number",
               str: "string", list: "array", dict: "object"}


def json_kind(value: Any) -> str:
    """The JSON name of a value's kind, as an error message names what it got."""
    if type(value) is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity"
    return _JSON_KINDS.get(type(value), type(value).__name__)
