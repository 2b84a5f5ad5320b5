"""Filters for noisy analog signals, applied by the engine before anything reads the value.

Moving average and median work over a small window kept in a numpy ring buffer; deadband holds
the last passed value until the signal moves by more than the band. Booleans, text and missing
values pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from drivers.base import SampleValue as Value
from mapping.types import Strict

MAX_WINDOW = 1000


class FilterSpec(Strict):
    """Exactly one of `moving_average: N`, `median: N` (window sizes) or `deadband: X`."""

    moving_average: int | None = Field(default=None, ge=2, le=MAX_WINDOW)
    median: int | None = Field(default=None, ge=2, le=MAX_WINDOW)
    deadband: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> FilterSpec:
        given = [v for v in (self.moving_average, self.median, self.deadband) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of moving_average, median or deadband")
        return self


@dataclass
class SignalFilter:
    """A filter with its own memory; `fresh()` gives an independent copy with none."""

    kind: str
    window: int = 0
    band: float = 0.0

    def __post_init__(self) -> None:
        self._buffer = np.zeros(max(self.window, 1), dtype=np.float64)
        self._filled = 0
        self._next = 0
        self._held: float | None = None

    @classmethod
    def from_spec(cls, spec: FilterSpec) -> SignalFilter:
        if spec.moving_average is not None:
            return cls("moving_average", window=spec.moving_average)
        if spec.median is not None:
            return cls("median", window=spec.median)
        return cls("deadband", band=float(spec.deadband or 0.0))

    def fresh(self) -> SignalFilter:
        return SignalFilter(self.kind, self.window, self.band)

    def apply(self, value: Value) -> Value:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if self.kind == "deadband":
            if self._held is None or abs(value - self._held) > self.band:
                self._held = float(value)
            return self._held
        self._buffer[self._next] = value
        self._next = (self._next + 1) % self.window
        self._filled = min(self._filled + 1, self.window)
        window = self._buffer[: self._filled]
        return float(np.mean(window) if self.kind == "moving_average" else np.median(window))
