"""The driver boundary: `Sample`, `Quality` and the `Driver` protocol.

Every protocol module yields `Sample`s through the same shape: `connect`, an async iterator of
samples, `close`. Drivers know nothing about packets, topics or the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

Value = bool | int | float | str | None


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one signal.

    `time` is the event time as UTC epoch seconds (device timestamp when trustworthy, else the
    gateway's receive time); `monotonic` is the gateway's monotonic clock at receipt, which the
    mapping uses for timers so that a stepped wall clock cannot stall or burst them. A failed read
    is a sample with `Quality.BAD` and a `reason`, never a missing value.
    """

    signal: str
    value: Value
    quality: Quality
    time: float
    monotonic: float
    reason: str | None = None

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD


class DriverError(Exception):
    """Base of every driver error; the message names the device and what went wrong."""


class ConfigError(DriverError):
    """A driver was configured with something it cannot use (bad address, unknown type)."""


@runtime_checkable
class Driver(Protocol):
    """A device link.

    Contract:
    - `samples()` connects on first use, yields samples until `close()` is called, and handles
      reconnection itself (with backoff): a lost link yields one `BAD` sample per signal with the
      reason, then nothing for those signals until the link is back.
    - No sample is yielded after `close()` returns.
    - Errors in configuration raise `ConfigError` before any I/O; anything else is retried.
    """

    name: str

    def samples(self) -> AsyncIterator[Sample]: ...

    async def close(self) -> None: ...
