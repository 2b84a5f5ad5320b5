"""The OPC UA driver's counters: plain ints bumped where things happen, a snapshot on demand.

The hot path (a burst of data changes) adds to them once per burst, not once per sample;
`snapshot()` copies them into a `drivers.base.DriverCounters` for the status API and the
gateway's Prometheus exporter.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from asyncua.observer import Observer

from drivers.base import DriverCounters, Quality, Sample

#: StatusCode bits of a DataValue: InfoType "DataValue" (bit 10) and Overflow (bit 7), set by
#: a server whose monitored-item queue was full and discarded values (OPC UA Part 4, 7.34.1).
OVERFLOW_BITS = 0x0480
_INFO_MASK = 0x0C80

_NOTHING = nullcontext()


class OpcUaCounters:
    """What one OPC UA server link did; every figure only grows while the driver lives.

    In `DriverCounters` terms:
    - `requests`: OPC UA service requests sent on the driver's sessions: session setup, node
      resolution, subscriptions and monitored items, poll-mode Reads, and asyncua's own
      Publish requests and watchdog reads (the keep-alive).
    - `errors`: connect attempts that failed and sessions that ended, by the kind of their
      reason (`comm_lost`, `comm_timeout`, `auth`, `security`), plus `node_missing` (a node
      not found at a connect) and `item_refused` (a monitored item the server refused).
    - `overruns`: poll cycles skipped because the previous one ran late (poll mode).
    - `reconnects`: sessions opened after the first.
    - `good_samples`, `bad_samples`: samples made; `bad_samples` counts every sample that is
      not good (bad or uncertain), as the gateway's own `bad_samples` does.

    In `extra` (exported as `keyop_driver_<name>_total`):
    - `connects` (sessions opened), `connect_failures`, `sessions_lost` (sessions that ended
      while up: keep-alive failed, bad subscription status, a request failed);
    - `notifications` (data changes received), `status_changes` (subscription status-change
      notifications; a bad one ends the session);
    - `dropped` (notifications lost to the driver's full queue), `queue_overflows` (values the
      server flagged with the Overflow bit: its monitored-item queue discarded values);
    - `polls` (poll-mode Read requests);
    - `uncertain_samples` and `lost_samples` (the `BAD` samples that report a lost or failed
      connection), both also in `bad_samples`.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.overruns = 0
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.sessions_lost = 0
        self.notifications = 0
        self.status_changes = 0
        self.dropped = 0
        self.queue_overflows = 0
        self.polls = 0
        self.good_samples = 0
        self.bad_samples = 0
        self.uncertain_samples = 0
        self.lost_samples = 0
        #: Give it to each asyncua client (`client.uaclient.observer`): counts its requests.
        self.observer: Observer = _RequestCounter(self)

    def error(self, reason: str, count: int = 1) -> None:
        """Count a failure by its reason's kind (the text before the first colon)."""
        kind = reason.split(":", 1)[0]
        self.errors[kind] = self.errors.get(kind, 0) + count

    def made(self, samples: Iterable[Sample]) -> None:
        """Count samples by quality (off the subscription hot path, which counts inline)."""
        for sample in samples:
            quality = sample.quality
            if quality is Quality.GOOD:
                self.good_samples += 1
            else:
                self.bad_samples += 1
                if quality is Quality.UNCERTAIN:
                    self.uncertain_samples += 1

    def flagged(self, code: int) -> None:
        """Count a value whose status code carries the Overflow bit."""
        if code & _INFO_MASK == OVERFLOW_BITS:
            self.queue_overflows += 1

    def snapshot(self, device: str) -> DriverCounters:
        return DriverCounters(
            device=device, protocol="opcua", requests=self.requests, errors=dict(self.errors),
            overruns=self.overruns, reconnects=self.reconnects,
            good_samples=self.good_samples, bad_samples=self.bad_samples,
            extra={
                "connects": self.connects, "connect_failures": self.connect_failures,
                "sessions_lost": self.sessions_lost, "notifications": self.notifications,
                "status_changes": self.status_changes, "dropped": self.dropped,
                "queue_overflows": self.queue_overflows, "polls": self.polls,
                "uncertain_samples": self.uncertain_samples, "lost_samples": self.lost_samples,
            },
        )


class _RequestCounter(Observer):
    """asyncua's observer, reduced to a request count.

    It sits on every request asyncua sends; the base class would time each one with a
    generator-based context manager, which nothing here reads.
    """

    def __init__(self, counters: OpcUaCounters) -> None:
        self._counters = counters

    def observe_request(self, request: Any) -> AbstractContextManager[None]:
        self._counters.requests += 1
        return _NOTHING
