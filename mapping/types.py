"""Base types of the mapping models: durations with units, ids, signal names, strictness."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from mapping.expr import SIGNAL_NAME
from sync.packet import ID_PATTERN

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


class Strict(BaseModel):
    """Base of every mapping model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


