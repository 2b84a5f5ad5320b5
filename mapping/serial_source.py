"""The mapping model of a serial barcode scanner or RFID reader source."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.settings import FramingSpec, SerialReaderConfig
from mapping.types import Duration, Strict


class Framing(Strict):
    """How the reader delimits its frames."""

    kind: Literal["line", "stx_etx", "fixed"] = "line"
    terminator: Literal["cr", "lf", "crlf"] = "crlf"
    checksum: Literal["none", "lrc", "bcc"] = "none"
    length: int = Field(default=0, ge=0, le=4096, description="fixed framing: bytes per frame")
    max_length: int = Field(default=512, ge=1, le=65536)
    prefix: str = ""
    suffix: str = ""
    timeout: Duration = Field(default=0.5, description="a partial frame older than this is dropped")

    @model_validator(mode="after")
    def _consistent(self) -> Framing:
        if self.kind == "fixed" and self.length < 1:
            raise ValueError("fixed framing needs `length`")
        if self.kind != "stx_etx" and self.checksum != "none":
            raise ValueError("a checksum goes with stx_etx framing")
        return self

    def to_driver(self) -> FramingSpec:
        """The framer's settings."""
        return FramingSpec(kind=self.kind, terminator=self.terminator, checksum=self.checksum,
                           length=self.length, max_length=self.max_length, prefix=self.prefix,
                           suffix=self.suffix, timeout_s=self.timeout)


class SerialSource(Strict):
    """A scanner or reader on RS-232/RS-485 or a USB serial adapter (`/dev/serial/by-id/...`).

    Each frame it sends becomes one sample of each signal that names this source.
    """

    protocol: Literal["serial"]
    port: str
    reader: Literal["barcode", "rfid"] = "barcode"
    baud: int = Field(default=9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = Field(default=1, description="1, 1.5 or 2")
    flow: Literal["none", "rtscts", "xonxoff"] = "none"
    framing: Framing = Framing()
    pattern: str | None = Field(
        default=None, description=r"site codes: named groups become fields, e.g. WO-(?P<order>\d+)"
    )
    dedupe_window: Duration = Field(default=2.0, description="RFID: repeated reads are one")
    depart_after: Duration = Field(default=5.0, description="RFID: unseen this long = departed")

    @model_validator(mode="after")
    def _stopbits(self) -> SerialSource:
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2, got {self.stopbits}")
        return self

    def to_driver(self, name: str, signals: tuple[str, ...]) -> SerialReaderConfig:
        """The serial reader driver's configuration: every frame is a sample of each of
        `signals`. Raises `drivers.base.ConfigError` for settings the driver cannot use."""
        return SerialReaderConfig(
            name=name, port=self.port, signals=signals, reader=self.reader, baud=self.baud,
            bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits, flow=self.flow,
            framing=self.framing.to_driver(), pattern=self.pattern,
            dedupe_window_s=self.dedupe_window, depart_after_s=self.depart_after)
