"""The drivers' settings: what each driver is built from, as plain frozen dataclasses.

This module imports no protocol library, so the mapping's source models (mapping/sources.py)
can produce these directly (`to_driver`): a setting is declared once, in the mapping's
validated model, and arrives here under the driver's own names and units (seconds as `_s`).
Each driver checks what only it can when it is built (`ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from drivers.base import ConfigError
from drivers.framing import FramingSpec

__all__ = ["MODBUS_ADDRESS", "PARITIES", "Backoff", "FramingSpec", "ModbusDeviceConfig",
           "ModbusSignal", "OpcUaDeviceConfig", "OpcUaSecurity", "OpcUaSignal",
           "SerialReaderConfig", "default_type"]

# Serial parity names, as the mapping writes them (drivers/serial_reader.py maps them to
# pyserial's constants).
PARITIES = ("none", "even", "odd", "mark", "space")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: `initial_s` doubling up to `max_s`, each varied by +/- `jitter`."""

    initial_s: float = 0.1
    max_s: float = 5.0
    jitter: float = 0.2

    def check(self, where: str) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ConfigError(f"{where}: backoff: expected 0 < initial <= max")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"{where}: backoff jitter {self.jitter}: expected 0..1")


# -- Modbus -------------------------------------------------------------------------------------

#: A Modbus address: table, register or bit number, and a register's bit (drivers/modbus_plan.py).
MODBUS_ADDRESS = re.compile(r"^(hr|ir|co|di):(\d{1,5})(?:\.(\d{1,2}))?$")


def default_type(address: str) -> str:
    """The type a signal gets when the mapping names none: bool for bits, else uint16."""
    match = MODBUS_ADDRESS.match(address.strip())
    if match and (match.group(1) in ("co", "di") or match.group(3) is not None):
        return "bool"
    return "uint16"


@dataclass(frozen=True, slots=True)
class ModbusSignal:
    """One value to poll (see drivers/modbus_plan.py for `address` and `type`).

    `interval_s` is the poll period in seconds; `scale`/`offset` are applied when either is set.
    """

    name: str
    address: str
    type: str = "uint16"
    interval_s: float = 1.0
    byte_order: str = "big"
    word_order: str = "big"
    scale: float | None = None
    offset: float | None = None


@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    """One Modbus device (a TCP host:port, or a unit on a serial bus) and its signals.

    `timeout_s` bounds connect and each request; `max_gap` is how many unused registers/bits
    a merged read may span between two signals; the backoff doubles from `backoff_initial_s`
    to `backoff_max_s`, each delay varied by +/- `backoff_jitter` (a fraction). `stagger_s`
    delays the first poll. For TCP, `host`/`port` name the device; an RTU device gets its
    `SerialBus` from the caller and `host` is only used in messages.
    """

    name: str
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    signals: tuple[ModbusSignal, ...] = ()
    max_gap: int = 8
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    backoff_jitter: float = 0.2
    stagger_s: float = 0.0

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial_s, self.backoff_max_s, self.backoff_jitter)


# -- OPC UA -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OpcUaSignal:
    """One node to watch.

    `interval_s` is the subscription's publishing interval (or the poll period in poll mode);
    `sampling_s` the server-side sampling interval (default: `interval_s`); `queue_size` the
    monitored item's queue; `deadband` an absolute deadband on numeric values (None = off);
    `expected` the value type the mapping declares (`int32`, `float64`, `string`, ...), checked
    against the node's DataType at every connect (None = not checked).
    """

    name: str
    node: str
    interval_s: float = 1.0
    sampling_s: float | None = None
    queue_size: int = 1
    deadband: float | None = None
    expected: str | None = None


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    """Secure channel: policy and mode, client certificate/key files, server trust folder."""

    policy: str = "None"
    mode: str = "None"
    certificate: str | None = None
    private_key: str | None = None
    trust_dir: str | None = None


@dataclass(frozen=True, slots=True)
class OpcUaDeviceConfig:
    """One OPC UA server and the signals read from it (`mode`: subscribe or poll)."""

    name: str
    endpoint: str
    signals: tuple[OpcUaSignal, ...] = ()
    mode: str = "subscribe"
    security: OpcUaSecurity = field(default_factory=OpcUaSecurity)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 4.0
    keepalive_s: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2


# -- serial readers -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SerialReaderConfig:
    """One serial reader and the signal names its reads go to."""

    name: str
    port: str
    signals: tuple[str, ...]
    reader: Literal["barcode", "rfid"] = "barcode"
    baud: int = 9600
    bytesize: int = 8
    parity: str = "none"
    stopbits: float = 1
    flow: Literal["none", "rtscts", "xonxoff"] = "none"
    framing: FramingSpec = field(default_factory=FramingSpec)
    pattern: str | None = None  # site-specific codes: named groups become fields
    dedupe_window_s: float = 2.0
    depart_after_s: float = 5.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.parity not in PARITIES:
            raise ConfigError(f"serial source {self.name!r}: parity {self.parity!r}: expected "
                              f"one of {', '.join(PARITIES)}")
        if self.bytesize not in (5, 6, 7, 8) or self.stopbits not in (1, 1.5, 2):
            raise ConfigError(f"serial source {self.name!r}: bytesize 5-8 and stopbits 1, 1.5 "
                              "or 2 expected")
        if self.framing.kind == "fixed" and self.framing.length < 1:
            raise ConfigError(f"serial source {self.name!r}: fixed framing needs a length")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ConfigError(f"serial source {self.name!r}: pattern: {error}") from None
