"""Ingest validation on the hot path: each event parsed, re-encoded and validated once.

`sync.packet.from_obj` validates a Python dict, which pydantic does at about a third of the
speed of validating JSON text. So each event of a payload is re-encoded compactly (in Rust, by
pydantic-core; that text is also the body the store keeps) and validated from that text. Only
when validation fails is the slower `from_obj` asked, for its field-naming error message.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import ValidationError

from sync.packet import MAX_EVENT_BYTES, Packet, PacketError, from_obj


def decode_events(payload: bytes) -> list[Any]:
    """The JSON events of a payload (one object, or a batch array), not yet validated."""
    if len(payload) > MAX_EVENT_BYTES:
        raise PacketError(f"payload: {len(payload)} bytes exceeds the {MAX_EVENT_BYTES} cap")
    try:
        obj = pydantic_core.from_json(payload)
    except ValueError as error:
        raise PacketError(f"payload: not valid JSON ({error})") from None
    return obj if isinstance(obj, list) else [obj]


def validate_event(obj: Any) -> tuple[Packet, str]:
    """A valid packet and its compact JSON text, or `PacketError` naming the field."""
    if not isinstance(obj, dict):
        from_obj(obj)  # raises, with the usual message
    body = pydantic_core.to_json(obj)
    try:
        packet = Packet.model_validate_json(body)
    except ValidationError:
        packet = from_obj(obj)  # raises PacketError with the field named
    return packet, body.decode("utf-8")
