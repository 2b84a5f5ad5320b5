"""The key-operation progress packet v1 (../shared/PACKET.md): model, JSON codec, JSON Schema.

A packet is a CloudEvents 1.0 event in structured mode. The mapping engine builds a `Draft`
(type, subject, event time, data); the gateway gives it its identity (`id`, `source`,
`sequence`, `sourceepoch`, `recordedtime`) when the outbox commits it.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_VERSION: Final = "1.0"
KOP_VERSION: Final = "1.0"
DATA_SCHEMA: Final = "keyop:packet:1"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=utf-8"
MAX_EVENT_BYTES = 64 * 1024
SEQUENCE_DIGITS = 20

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}/[a-z0-9][a-z0-9-]{0,63}$"
ULID_PATTERN = r"^[0-9A-HJKMNP-TV-Z]{26}$"
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
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
    }
)
# Data fields each type family requires beyond the always-required ones.
_REQUIRED_BY_PREFIX: dict[str, tuple[str, ...]] = {
    "keyop.operation.": ("workOrder", "operation", "runId", "state", "quantities"),
    "keyop.station.alarm": ("alarm",),
    "keyop.material.": ("epcis",),
    "keyop.station.context": ("scan",),
    "keyop.outbox.gap": ("gap",),
}
# The same, resolved once per type (Packet's validator runs on every packet ingested).
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    type_: tuple(
        name
        for prefix, names in _REQUIRED_BY_PREFIX.items()
        if type_.startswith(prefix)
        for name in names
    )
    for type_ in EVENT_TYPES
}


class PacketError(ValueError):
    """A packet that does not satisfy v1; the message names the field and what was expected."""


class _Model(BaseModel):
    # Consumers ignore unknown fields (minor versions only add optional ones).
    model_config = ConfigDict(extra="ignore", frozen=True)


class WorkOrder(_Model):
    id: str = Field(min_length=1, max_length=128)
    erpOrder: str | None = None
    customerOrders: list[str] | None = None


class Operation(_Model):
    id: str = Field(min_length=1, max_length=128)
    name: str | None = None


class Equipment(_Model):
    path: str = Field(min_length=1, max_length=512)
    id: str | None = None
    level: str | None = None


class Reason(_Model):
    code: str
    text: str | None = None


class State(_Model):
    value: Literal["Ready", "Running", "Paused", "Completed", "Aborted"]
    previous: str | None = None
    reason: Reason | None = None


class Quantities(_Model):
    uom: str = "C62"
    planned: int | None = Field(default=None, ge=0)
    produced: int = Field(ge=0)
    good: int = Field(ge=0)
    scrap: int = Field(ge=0)
    rework: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _produced_is_sum(self) -> Quantities:
        if self.produced != self.good + self.scrap + self.rework:
            raise ValueError(
                f"produced ({self.produced}) must equal good + scrap + rework "
                f"({self.good} + {self.scrap} + {self.rework})"
            )
        return self


class Delta(_Model):
    good: int | None = None
    scrap: int | None = None
    rework: int | None = None


class Material(_Model):
    use: Literal["Received", "Consumed", "Produced"]
    materialId: str | None = None
    lotId: str | None = None
    epcs: list[str] | None = None
    quantity: float | None = None
    uom: str | None = None


class Part(_Model):
    serial: str
    status: Literal["PASS", "FAIL"]


class Alarm(_Model):
    code: str
    severity: str
    active: bool
    text: str | None = None


class Param(_Model):
    value: bool | int | float | str | None
    uom: str | None = None
    # `class` is a Python keyword, hence the alias.
    class_: Literal["public", "partner", "restricted"] = Field(alias="class")

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Scan(_Model):
    kind: Literal["barcode", "rfid"]
    code: str
    fields: dict[str, str] | None = None


class Gap(_Model):
    fromSequence: str = Field(pattern=SEQUENCE_PATTERN)
    toSequence: str = Field(pattern=SEQUENCE_PATTERN)
    reason: str


class Origin(_Model):
    protocol: str
    device: str | None = None
    ref: str | None = None


class Data(_Model):
    kopVersion: Literal["1.0"] = KOP_VERSION
    workOrder: WorkOrder | None = None
    operation: Operation | None = None
    runId: str | None = None
    equipment: Equipment
    state: State | None = None
    quantities: Quantities | None = None
    delta: Delta | None = None
    materials: list[Material] | None = None
    parts: list[Part] | None = None
    alarm: Alarm | None = None
    params: dict[str, Param] | None = None
    epcis: dict[str, Any] | None = None
    scan: Scan | None = None
    gap: Gap | None = None
    tzOffset: str = Field(pattern=r"^[+-]\d{2}:\d{2}$")
    timeQuality: Literal["synced", "unsynced", "estimated"]
    origin: Origin | None = None


class Packet(_Model):
    """A key-operation progress packet (CloudEvents envelope + keyop data)."""

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(pattern=ULID_PATTERN)
    source: str = Field(pattern=SOURCE_PATTERN)
    type: str
    subject: str = Field(min_length=1, max_length=512)
    time: str = Field(pattern=TIME_PATTERN)
    recordedtime: str = Field(pattern=TIME_PATTERN)
    sequence: str = Field(pattern=SEQUENCE_PATTERN)
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

    def data_json(self) -> dict[str, Any]:
        return self.data.model_dump(mode="json", by_alias=True, exclude_none=True)


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
    """RFC 3339 UTC with milliseconds, as PACKET.md requires.

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


def render(
    draft: Draft, *, id: str, source: str, sequence: int, epoch: str, recorded: float
) -> bytes:
    """Encode a draft with its identity as the packet's JSON bytes (not re-validated: hot path)."""
    event = {
        "specversion": SPEC_VERSION,
        "id": id,
        "source": source,
        "type": draft.type,
        "subject": draft.subject,
        "time": format_time(draft.time),
        "recordedtime": format_time(recorded),
        "sequence": format_sequence(sequence),
        "sourceepoch": epoch,
        "datacontenttype": "application/json",
        "dataschema": DATA_SCHEMA,
        "data": draft.data,
    }
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def encode(packet: Packet) -> bytes:
    return packet.model_dump_json(by_alias=True, exclude_none=True).encode()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "packet"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def from_obj(obj: Any) -> Packet:
    """Validate a decoded JSON object as a v1 packet; raise `PacketError` naming the field."""
    if not isinstance(obj, dict):
        raise PacketError(f"packet: expected a JSON object, got {type(obj).__name__}")
    try:
        return Packet.model_validate(obj)
    except ValidationError as error:
        raise PacketError(_describe(error)) from None


def _load(payload: bytes | str, what: str) -> Any:
    if len(payload) > MAX_EVENT_BYTES:
        raise PacketError(f"{what}: {len(payload)} bytes exceeds the {MAX_EVENT_BYTES} cap")
    try:
        return json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PacketError(f"{what}: not valid JSON ({error})") from None


def decode(payload: bytes | str) -> Packet:
    """Decode and validate one packet."""
    return from_obj(_load(payload, "packet"))


def decode_many(payload: bytes | str) -> list[Any]:
    """Split a payload into its JSON events (one object, or a batch array) without validating.

    The caller validates each with `from_obj`, so one bad event in a batch does not sink the
    others.
    """
    obj = _load(payload, "payload")
    return obj if isinstance(obj, list) else [obj]


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of packet v1, with the per-type required data fields."""
    schema = Packet.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = DATA_SCHEMA
    schema["title"] = "keyop key-operation progress packet v1"
    schema["properties"]["type"]["enum"] = sorted(EVENT_TYPES)
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"pattern": "^" + re.escape(prefix)}}},
            "then": {"properties": {"data": {"required": list(names)}}},
        }
        for prefix, names in _REQUIRED_BY_PREFIX.items()
    ]
    return schema
