"""Sources (devices and their connection settings) and signals (one tag each) of a mapping.

Each protocol has its own source model, told apart by `protocol`; a signal names its source
and the protocol-specific address, which the protocol's driver parses (its errors are mapped
back to the YAML position by the gateway).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, TypeAdapter

from mapping.types import Duration, Id, Strict


class ModbusTcpSource(Strict):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    timeout: Duration = 1.0


Source = ModbusTcpSource


class Signal(Strict):
    """One tag on one source."""

    source: Id
    address: str = Field(description="Modbus: hr:N, ir:N, co:N or di:N")
    type: Literal["bool", "int16", "uint16", "int32", "uint32"] = "uint16"
    interval: Duration = 1.0
    unit: str | None = None



SOURCE_ADAPTER: TypeAdapter[Source] = TypeAdapter(Source)
SIGNAL_ADAPTER: TypeAdapter[Signal] = TypeAdapter(Signal)
