"""The JSON Schema (2020-12) of packet v1 from its models: `config/packet.schema.json` is its
checked copy, `keyop schema packet` prints it."""

from __future__ import annotations

import re
from typing import Any

from sync.packet import (
    BACKFILL_ATTRIBUTE,
    DATA_SCHEMA,
    EVENT_TYPES,
    NO_EQUIPMENT_PREFIX,
    REQUIRED_BY_PREFIX,
    Packet,
)


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
        for prefix, names in REQUIRED_BY_PREFIX.items()
    ] + [{
        "if": {"properties": {"type": {"not": {"pattern": "^" + re.escape(NO_EQUIPMENT_PREFIX)}}}},
        "then": {"properties": {"data": {"required": ["equipment"]}}},
    }]
    schema["properties"][BACKFILL_ATTRIBUTE] = {
        "const": True, "title": "Keyopbackfill",
        "description": "set by the hub on an event of a newly assigned order's history"}
    return schema
