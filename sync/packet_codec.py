"""The packet's JSON codec: our own packets to bytes (`render`, the edge's hot path; `encode`),
and bytes from outside to packets, as hostile as they come (`load_json`, `decode`,
`decode_many`, `validate`, `from_obj`): a size cap, strict validation, and errors that name the
field and what was expected (docs/packet.md, "What the hub refuses").
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic_core
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from sync.packet import (
    DATA_SCHEMA,
    MAX_EVENT_BYTES,
    SPEC_VERSION,
    Draft,
    Packet,
    PacketError,
    format_sequence,
    format_time,
    json_kind,
)


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


# Pydantic's type errors, as what a JSON producer should have sent.
_EXPECTED = {"int_type": "integer", "string_type": "string", "float_type": "number",
             "bool_type": "boolean", "list_type": "array", "dict_type": "object",
             "model_type": "object", "model_attributes_type": "object"}
_MAX_REPORTED = 10  # errors named in one message; a message with thousands stays short


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "packet"


def _describe(items: list[ErrorDetails]) -> str:
    parts = []
    for item in items[:_MAX_REPORTED]:
        expected = _EXPECTED.get(item["type"])
        if expected is not None:
            message = f"expected a JSON {expected}, got {json_kind(item['input'])}"
        elif item["type"] == "finite_number":
            message = f"expected a finite number, got {json_kind(item['input'])}"
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
            found.append(f"{_where(loc)}: expected a finite number, got {json_kind(node)}")
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
        raise PacketError(f"packet: expected a JSON object, got {json_kind(obj)}")
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
