"""The driver boundary: `Sample`, `Quality` and the `Driver` protocol.

Every protocol module yields `Sample`s through the same shape: `connect`, an async iterator of
samples, `close`. Drivers know nothing about packets, topics or the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Scan:
    """A barcode or RFID read, decoded by the driver.

    `code` is the payload as read; `fields` the decoded parts (GS1 application identifiers,
    named groups of a site pattern); for RFID, `epc` is the pure-identity URN when the tag
    encoding is known, `event` says whether the tag arrived or departed (the driver's dedupe
    window turns repeated reads into one arrival), with `antenna` and `rssi` when the reader
    sends them. `str(scan)` is the code, so a scan can stand where text is expected.
    """

    kind: str  # "barcode" or "rfid"
    code: str
    fields: tuple[tuple[str, str], ...] = ()
    epc: str | None = None
    event: str = "read"  # read | arrival | departure
    antenna: int | None = None
    rssi: float | None = None

    def __str__(self) -> str:
        return self.code

    @property
    def field_map(self) -> dict[str, str]:
        return dict(self.fields)


Value = bool | int | float | str | None
SampleValue = Value | Scan  # what a sample carries: a scalar, or a decoded scan


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
    value: SampleValue
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
