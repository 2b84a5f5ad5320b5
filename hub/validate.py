"""Ingest validation on the hot path: each event parsed once, validated strictly, re-serialised.

A payload is parsed once (in Rust, by pydantic-core) and each event is validated from its dict,
strictly (no coercion) and within the limits `sync.packet` states. What the hub stores and fans
out is the packet as validated and re-serialised (docs/packet.md's fields only), never the raw body
as it arrived. Validating the event's re-encoded JSON text instead of the dict costs more: on
pydantic 2.14 the text route took about a tenth more CPU (the packet's model instances cost the
same either way, and the text must be parsed again).
"""

from __future__ import annotations

from typing import Any

from sync.packet import Packet
from sync.packet_codec import load_json, validate


def decode_events(payload: bytes) -> list[Any]:
    """The JSON events of a payload (one object, or a batch array), not yet validated."""
    obj = load_json(payload, "payload")
    return obj if isinstance(obj, list) else [obj]


def validate_event(obj: Any) -> tuple[Packet, dict[str, Any], str]:
    """The valid packet, its canonical JSON-ready dict (what the hub routes and fans out) and
    that dict's compact JSON text (what the store keeps); or `PacketError` naming the field."""
    return validate(obj)
