"""The Modbus driver's faults: why a read failed, and the bookkeeping that logs a fault's
transitions (once at ERROR when it starts, once at INFO when it ends), not its repetitions, and
gives each affected signal one `BAD` sample per fault.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.base import Quality, Sample
from drivers.modbus_plan import Read

log = logging.getLogger("drivers.modbus")

#: Modbus exception codes by name (a bounded set, fit for a metric label).
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

#: Exceptions a device or a TCP gateway answers for a unit id it does not serve (pymodbus'
#: own server answers 4; gateways answer 10 or 11).
_WRONG_UNIT_CODES = frozenset({4, 10, 11})


def unit_exception(name: str, code: int, ref: str, unit: int) -> str:
    """The reason for an exception response, naming the unit (and hinting at a wrong one)."""
    reason = f"modbus_exception: {name} (code {code}) reading {ref} from unit {unit}"
    if code in _WRONG_UNIT_CODES:
        reason += f"; check that {unit} is the device's unit id"
    return reason


class ReadFailed(Exception):
    """A read did not produce values; `link` tells whether the connection is at fault."""

    def __init__(self, reason: str, *, link: bool, code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link = link
        self.code = code

    @property
    def kind(self) -> str:
        """A bounded name for counting: the exception's name, else the reason's prefix."""
        if self.code:
            return EXCEPTION_NAMES.get(self.code, "unknown exception").replace(" ", "_")
        return self.reason.split(":", 1)[0]


class Faults:
    """One device's current faults: of its link, of single reads, and per signal the kind of
    fault already reported."""

    def __init__(self, device: str, target: str) -> None:
        self.device = device
        self.target = target  # the link's name, where a link fault is logged
        self.link: str | None = None  # reason while the link is down
        self.reads: dict[Read, str] = {}  # Modbus exception per read, while it lasts
        self.bad: dict[str, str] = {}  # signal -> kind of the fault already reported

    def __bool__(self) -> bool:
        """Whether any fault is open (checked on every good read: plain attribute tests)."""
        return self.link is not None or bool(self.reads) or bool(self.bad)

    def failed(self, read: Read, exc: ReadFailed) -> list[Sample]:
        """Record a failed read; the `BAD` samples of its signals not yet told of this fault."""
        if exc.link:
            if self.link is None:
                self._log_error(self.target, exc.reason)
            self.link = exc.reason
        elif read not in self.reads:
            self.reads[read] = exc.reason
            self._log_error(read.ref, exc.reason)
        received, mono = time.time(), asyncio.get_running_loop().time()
        out = []
        kind = exc.reason.split(":", 1)[0]
        for p in read.points:
            if self.bad.get(p.signal) == kind:
                continue  # already reported; quiet until it reads again or the fault changes
            self.bad[p.signal] = kind
            out.append(Sample(p.signal, None, Quality.BAD, received, mono, exc.reason))
        return out

    def recovered(self, read: Read) -> None:
        """`read` succeeded: close the faults it ends."""
        if self.link is not None:
            log.info(
                "modbus device %s: recovered after %s", self.device, self.link,
                extra={"device": self.device, "address": self.target, "reason": "recovered"},
            )
            self.link = None
        if self.reads and self.reads.pop(read, None) is not None:
            log.info(
                "modbus device %s: %s reads again", self.device, read.ref,
                extra={"device": self.device, "address": read.ref, "reason": "recovered"},
            )
        if self.bad:
            for p in read.points:
                self.bad.pop(p.signal, None)

    def _log_error(self, address: str, reason: str) -> None:
        log.error("modbus device %s: %s", self.device, reason,
                  extra={"device": self.device, "address": address, "reason": reason})
