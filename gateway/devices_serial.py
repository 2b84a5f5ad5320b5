"""Serial scanner and RFID reader drivers from a mapping's serial sources."""

from __future__ import annotations

from drivers.framing import FramingSpec
from drivers.serial_reader import SerialReaderConfig, SerialReaderDriver
from mapping.serial_source import SerialSource


def serial_driver(source_id: str, source: SerialSource, signals: list[str]) -> SerialReaderDriver:
    """Raises `drivers.base.ConfigError` for settings the driver cannot use."""
    framing = source.framing
    return SerialReaderDriver(SerialReaderConfig(
        name=source_id,
        port=source.port,
        signals=tuple(signals),
        reader=source.reader,
        baud=source.baud,
        bytesize=source.bytesize,
        parity=source.parity,
        stopbits=source.stopbits,
        flow=source.flow,
        framing=FramingSpec(kind=framing.kind, terminator=framing.terminator,
                            checksum=framing.checksum, length=framing.length,
                            max_length=framing.max_length, prefix=framing.prefix,
                            suffix=framing.suffix, timeout_s=framing.timeout),
        pattern=source.pattern,
        dedupe_window_s=source.dedupe_window,
        depart_after_s=source.depart_after,
    ))
