"""The key-operation progress packet v1 (docs/packet.md): model, JSON codec, JSON Schema.

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
from typing import Annotated, Any, Final, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

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
_REQUIRED_BY_PREFIX: dict[str, tuple[str, ...]] = {
    "keyop.operation.": ("workOrder", "operation", "runId", "state", "quantities"),
    "keyop.station.alarm": ("alarm",),
    "keyop.material.": ("epcis",),
    "keyop.station.context": ("scan",),
    "keyop.outbox.gap": ("gap",),
    "keyop.assignment.": ("workOrder", "assignment"),
}
# Every type but these (the hub's assignment events: no station) has an `equipment`.
_NO_EQUIPMENT_PREFIX = "keyop.assignment."
# The same, resolved once per type (Packet's validator runs on every packet ingested).
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    type_: (() if type_.startswith(_NO_EQUIPMENT_PREFIX) else ("equipment",)) + tuple(
        name
        for prefix, names in _REQUIRED_BY_PREFIX.items()
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
        return f"expected a finite number, got {_json_kind(value)}"
    if kind is str:
        if len(value) > TEXT_MAX:
            return f"text longer than {TEXT_MAX} characters"
        return "a string holds a NUL character (\\u0000)" if "\x00" in value else None
    return f"expected a JSON boolean, integer, number, string or null, got {_json_kind(value)}"


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
    class_: Literal["public", "partner", "restricted"] = Field(alias="class")


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


_JSON_KINDS = {type(None): "null", bool: "boolean", int: "integer", float: "number",
               str: "string", list: "array", dict: "object"}
# Pydantic's type errors, as what a JSON producer should have sent.
_EXPECTED = {"int_type": "integer", "string_type": "string", "float_type": "number",
             "bool_type": "boolean", "list_type": "array", "dict_type": "object",
             "model_type": "object", "model_attributes_type": "object"}
_MAX_REPORTED = 10  # errors named in one message; a message with thousands stays short


def _json_kind(value: Any) -> str:
    if type(value) is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "packet"


def _describe(items: list[ErrorDetails]) -> str:
    parts = []
    for item in items[:_MAX_REPORTED]:
        expected = _EXPECTED.get(item["type"])
        if expected is not None:
            message = f"expected a JSON {expected}, got {_json_kind(item['input'])}"
        elif item["type"] == "finite_number":
            message = f"expected a finite number, got {_json_kind(item['input'])}"
        else:
            message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{_where(item['loc'])}: {message}")
    if len(items) > _MAX_REPORTED:
        parts.append(f"and {len(items) - _MAX_REPORTED} more")
    return "; ".join(parts)


def _poison(node: Any, loc: tuple[Any, ...], found: list[str]) -> None:
    """Where `node` holds a NUL character or a non-finite number (free-form fields can)."""
    if isinstance(node, str):
        if "\x00" in node:
            found.append(f"{_where(loc)}: a string holds a NUL character (\\u0000)")
    elif isinstance(node, float):
        if not math.isfinite(node):
            found.append(f"{_where(loc)}: expected a finite number, got {_json_kind(node)}")
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and "\x00" in key:
                found.append(f"{_where((*loc, key))}: a name holds a NUL character (\\u0000)")
            _poison(value, (*loc, key), found)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _poison(value, (*loc, index), found)


def _without(obj: dict[str, Any], locs: list[tuple[Any, ...]]) -> dict[str, Any]:
    """A copy of `obj` without the members at `locs` (copied along their paths only)."""
    root = dict(obj)
    for loc in locs:
        node: Any = root
        for step in loc[:-1]:
            child = node[step]
            node[step] = child = dict(child) if isinstance(child, dict) else list(child)
            node = child
        del node[loc[-1]]
    return root


# The core validator itself: `Packet.model_validate` only adds a Python call around it.
_validate_python = Packet.__pydantic_validator__.validate_python


def _strict_packet(obj: dict[str, Any]) -> tuple[Packet, dict[str, Any]]:
    """The packet and the object it was validated from, unknown members removed."""
    try:
        return _validate_python(obj), obj
    except ValidationError as error:
        items = error.errors(include_url=False, include_context=False)
    problems = [item for item in items if item["type"] != "extra_forbidden"]
    if problems:
        raise PacketError(_describe(problems))
    known = _without(obj, [item["loc"] for item in items])
    try:
        return _validate_python(known), known
    except ValidationError as error:  # e.g. a model-level rule, checked once fields are valid
        raise PacketError(_describe(error.errors(include_url=False))) from None


def validate(obj: Any) -> tuple[Packet, dict[str, Any], str]:
    """Validate a decoded JSON object as a v1 packet, as the hub stores and forwards it.

    Returns the packet, its canonical JSON-ready dict (docs/packet.md's fields only: unknown ones
    are dropped at every level; free-form `epcis` and `scan.fields` stay as they are) and
    that dict's compact JSON text (UTF-8, non-ASCII kept). Raises `PacketError` naming the
    field(s) and what was expected; NUL characters (PostgreSQL text cannot hold them) and
    non-finite numbers are refused anywhere, free-form fields included.

    Strict validation coerces nothing, so the object validated, once rid of unknown members,
    is the packet re-serialised: no dump from the model is needed (it would cost 60 % more).
    """
    if not isinstance(obj, dict):
        raise PacketError(f"packet: expected a JSON object, got {_json_kind(obj)}")
    packet, canonical = _strict_packet(obj)
    try:
        body = pydantic_core.to_json(canonical)
    except ValueError as error:  # only from Python callers: JSON parses to JSON types
        raise PacketError(f"packet: not JSON-serialisable ({error})") from None
    # The walk that names the field runs only when a cheap look says it may find something.
    # A NUL can only arrive as the escape \\u0000 (JSON refuses raw control characters), so
    # a body without a backslash has none; a non-finite number can only sit in free-form
    # `epcis` (typed fields refuse them), and serialises as the NaN / Infinity constants.
    nul = b"\\" in body and b"\\u0000" in body
    if nul or (packet.data.epcis is not None and (b"NaN" in body or b"Infinity" in body)):
        found: list[str] = []
        _poison(canonical, (), found)
        if found:
            more = len(found) - _MAX_REPORTED
            raise PacketError("; ".join(found[:_MAX_REPORTED] + [f"and {more} more"] * (more > 0)))
    return packet, canonical, body.decode("utf-8")


def from_obj(obj: Any) -> Packet:
    """Validate a decoded JSON object as a v1 packet; raise `PacketError` naming the field."""
    return validate(obj)[0]


def load_json(payload: bytes | str, what: str) -> Any:
    """Parse a payload of at most MAX_EVENT_BYTES.

    The NaN and Infinity tokens (no JSON, but what Python's json module writes for non-finite
    floats) are parsed, so that `validate` refuses the one event that holds one, naming the
    field, while the other events of a batch, and the event's identity, are still known: a
    gateway that sent one is not stuck on a message the hub cannot read at all.
    """
    if len(payload) > MAX_EVENT_BYTES:
        raise PacketError(f"{what}: {len(payload)} bytes exceeds the {MAX_EVENT_BYTES} cap")
    try:
        return pydantic_core.from_json(payload)
    except ValueError as error:
        raise PacketError(f"{what}: not valid JSON ({error})") from None


def decode(payload: bytes | str) -> Packet:
    """Decode and validate one packet."""
    return from_obj(load_json(payload, "packet"))


def decode_many(payload: bytes | str) -> list[Any]:
    """Split a payload into its JSON events (one object, or a batch array) without validating.

    The caller validates each with `from_obj`, so one bad event in a batch does not sink the
    others.
    """
    obj = load_json(payload, "payload")
    return obj if isinstance(obj, list) else [obj]


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of packet v1, with the per-type required data fields."""
    schema = Packet.model_json_schema(by_alias=True)
    # The models forbid unknown fields only to find them fast; consumers ignore them.
    for definition in [schema, *schema.get("$defs", {}).values()]:
        definition.pop("additionalProperties", None)
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
    ] + [{
        "if": {"properties": {"type": {"not": {"pattern": "^" + re.escape(_NO_EQUIPMENT_PREFIX)}}}},
        "then": {"properties": {"data": {"required": ["equipment"]}}},
    }]
    schema["properties"][BACKFILL_ATTRIBUTE] = {
        "const": True, "title": "Keyopbackfill",
        "description": "set by the hub on an event of a newly assigned order's history"}
    return schema
