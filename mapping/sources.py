"""Sources (devices and their connection settings) and signals (one tag each) of a mapping.

Each protocol has its own source model, told apart by `protocol` (`modbus_tcp`, `modbus_rtu`,
`opcua`); a signal names its source and the protocol-specific reference (`address` for Modbus,
`node` for OPC UA), which the protocol's driver parses (its errors are mapped back to the YAML
position by the gateway). Secrets never live in the YAML: an OPC UA password comes from an
environment variable or a file that the source names.

Each source model is the one declaration of its driver's settings: `to_driver` turns it, with
its signals, into the driver's configuration (drivers/settings.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, TypeAdapter, WithJsonSchema

from drivers.settings import (
    ModbusDeviceConfig,
    ModbusSignal,
    OpcUaDeviceConfig,
    OpcUaSignal,
    default_type,
)
from drivers.settings import OpcUaSecurity as DriverSecurity
from mapping.filters import FilterSpec
from mapping.serial_source import SerialSource
from mapping.types import Duration, Id, Strict

_VALUE_TYPE = re.compile(
    r"^(bool|int16|uint16|int32|uint32|int64|uint64|float32|float64|string(\(\d{1,3}\))?)$"
)


def _value_type(value: str) -> str:
    if not _VALUE_TYPE.match(value):
        raise ValueError(
            f"Input should be one of bool, int16, uint16, int32, uint32, int64, uint64, "
            f"float32, float64, string (OPC UA) or string(n) (Modbus) (got {value!r})"
        )
    return value


ValueType = Annotated[
    str,
    AfterValidator(_value_type),
    WithJsonSchema({"type": "string", "pattern": _VALUE_TYPE.pattern,
                    "examples": ["uint16", "float32", "string(16)"]}),
]


class ModbusTcpSource(Strict):
    """A Modbus TCP device (or a TCP gateway in front of serial units)."""

    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 1.0
    max_gap: int = Field(default=8, ge=0, le=2000,
                         description="unused registers/bits a merged read may bridge")

    def to_driver(self, name: str, signals: tuple[ModbusSignal, ...]) -> ModbusDeviceConfig:
        """The Modbus driver's configuration of this device."""
        return ModbusDeviceConfig(name=name, host=self.host, port=self.port, unit_id=self.unit,
                                  timeout_s=self.timeout, signals=signals, max_gap=self.max_gap)


class ModbusRtuSource(Strict):
    """One unit on an RS-485 line; sources naming the same `port` share the bus (one lock)."""

    protocol: Literal["modbus_rtu"]
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    unit: int = Field(default=1, ge=1, le=247)
    timeout: Duration = 1.0
    frame_gap: Duration | None = Field(
        default=None, description="silence between frames; default 3.5 characters")
    max_gap: int = Field(default=8, ge=0, le=2000)

    def to_driver(self, name: str, signals: tuple[ModbusSignal, ...]) -> ModbusDeviceConfig:
        """The Modbus driver's configuration of this unit (the bus is the caller's: `port`
        only names it in messages)."""
        return ModbusDeviceConfig(name=name, host=self.port, port=1, unit_id=self.unit,
                                  timeout_s=self.timeout, signals=signals, max_gap=self.max_gap)


class OpcUaSecurity(Strict):
    """Secure channel settings; files are relative to the mapping file's folder."""

    policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = (
        "None")
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = Field(default=None, description="client certificate (DER or PEM)")
    private_key: str | None = Field(default=None, description="client private key (PEM)")
    trust: str | None = Field(
        default=None, description="folder of trusted server (or CA) certificates")

    def to_driver(self, folder: Path) -> DriverSecurity:
        """The driver's security settings, with the files resolved under `folder`."""
        def under(value: str | None) -> str | None:
            return None if value is None else str(folder / value)
        return DriverSecurity(self.policy, self.mode, under(self.certificate),
                              under(self.private_key), under(self.trust))


class OpcUaSource(Strict):
    """An OPC UA server; signals arrive by subscription, or by polling reads (`mode: poll`)."""

    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="opc.tcp://host:port/path")
    mode: Literal["subscribe", "poll"] = "subscribe"
    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = None
    password_env: str | None = Field(default=None,
                                     description="environment variable holding the password")
    password_file: str | None = Field(default=None, description="file holding the password")
    timeout: Duration = 4.0
    keepalive: Duration = Field(default=2.0, description="server health probe period")

    def to_driver(self, name: str, signals: tuple[OpcUaSignal, ...], *, folder: Path,
                  password: str | None) -> OpcUaDeviceConfig:
        """The OPC UA driver's configuration of this server: files resolved under `folder` (the
        mapping file's), and the `password` read from where the source says."""
        return OpcUaDeviceConfig(
            name=name, endpoint=self.endpoint, signals=signals, mode=self.mode,
            security=self.security.to_driver(folder), username=self.username,
            password=password, timeout_s=self.timeout, keepalive_s=self.keepalive)


Source = Annotated[
    ModbusTcpSource | ModbusRtuSource | OpcUaSource | SerialSource,
    Field(discriminator="protocol"),
]


class Signal(Strict):
    """One tag on one source.

    Modbus: `address` (hr:N, ir:N, co:N, di:N, hr:N.b), `type`, byte/word order, scale/offset,
    `interval` (the poll period). OPC UA: `node` (a NodeId such as `ns=2;s=Line3.W2.Busy`, or a
    browse path from the Objects folder such as `/Objects/2:Line3/2:W2/2:Busy`), `interval`
    (publishing interval, or poll period in poll mode), `sampling`, `queue_size`, `deadband`.
    """

    source: Id
    address: str | None = Field(default=None, description="Modbus: hr:N, ir:N, co:N, di:N, hr:N.b")
    node: str | None = Field(default=None, description="OPC UA: NodeId or /Objects/... path")
    type: ValueType | None = Field(
        default=None, description="Modbus: value type (uint16 if unset); OPC UA: the expected "
        "type, checked against the server's DataType")
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    scale: float | None = None
    offset: float | None = None
    interval: Duration = 1.0
    sampling: Duration | None = Field(default=None, description="OPC UA sampling interval")
    queue_size: int = Field(default=1, ge=1, le=10000, description="OPC UA monitored item queue")
    deadband: float | None = Field(default=None, ge=0, description="OPC UA absolute deadband")
    unit: str | None = None
    filter: FilterSpec | None = Field(
        default=None, description="noisy analog values: moving_average: N, median: N or deadband: X"
    )

    @property
    def ref(self) -> str:
        """The protocol reference: the Modbus address or the OPC UA node."""
        return self.address or self.node or ""

    def to_modbus(self, name: str) -> ModbusSignal:
        """This signal as the Modbus driver polls it (an unset address fails the driver's
        check of it)."""
        address = self.address or ""
        return ModbusSignal(name, address, self.type or default_type(address), self.interval,
                            self.byte_order, self.word_order, self.scale, self.offset)

    def to_opcua(self, name: str) -> OpcUaSignal:
        """This signal as the OPC UA driver watches it."""
        return OpcUaSignal(name, self.node or "", self.interval, self.sampling,
                           self.queue_size, self.deadband, self.type)


def value_kind(signal: Signal, source: object) -> str | None:
    """What kind of value a signal gives, as expressions see it: `bool`, `number`, `text` or
    `scan`; None when the mapping does not say (an OPC UA node without `type`)."""
    if isinstance(source, SerialSource):
        return "scan"
    kind = signal.type
    if kind is None and isinstance(source, ModbusTcpSource | ModbusRtuSource):
        kind = default_type(signal.address or "")
    if kind is None:
        return None
    if kind == "bool":
        return "bool"
    return "text" if kind.startswith("string") else "number"


SOURCE_ADAPTER: TypeAdapter[
    ModbusTcpSource | ModbusRtuSource | OpcUaSource | SerialSource
] = TypeAdapter(Source)
SIGNAL_ADAPTER: TypeAdapter[Signal] = TypeAdapter(Signal)
