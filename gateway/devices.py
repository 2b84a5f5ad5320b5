"""Build driver instances from a compiled mapping; driver config errors point into the YAML.

One driver per source that has signals: Modbus TCP (its own connection), Modbus RTU (sources
naming the same serial `port` share one `SerialBus`: one lock, one client, frame gaps kept),
OPC UA. File paths in a source (certificates, trust folder, password file) are relative to
the mapping file's folder. An OPC UA password is read here, from the environment variable or
the file the source names; the mapping never holds it.

A missing certificate, key, trust folder, password file or password variable is an error
pointing at the field that names it; checking off-site (`keyop check --offline`), where those
files are not, it is a warning instead (`build_drivers(..., offline=[])` collects them).
"""

from __future__ import annotations

import os
from pathlib import Path

from common.yamlsrc import Document
from drivers.base import ConfigError, Driver
from drivers.modbus import ModbusDeviceConfig, ModbusDriver, ModbusSignal, parse_signal
from drivers.modbus_link import SerialBus
from drivers.opcua import OpcUaDriver
from drivers.opcua_nodes import OPCUA_TYPES, check_signal
from drivers.serial_reader import SerialReaderDriver
from drivers.settings import Backoff
from mapping.engine import CompiledMapping
from mapping.errors import MappingError, Problem
from mapping.load import signal_position
from mapping.serial_source import SerialSource
from mapping.sources import ModbusRtuSource, ModbusTcpSource, OpcUaSource, Signal

_MODBUS_ONLY = ("address", "type", "scale", "offset")
_NOT_OPCUA = ("address", "scale", "offset")  # `type` is the expected DataType there
_OPCUA_ONLY = ("node", "sampling", "deadband")
# What every Modbus RTU source on one serial port must agree on.
_LINE = ("baudrate", "bytesize", "parity", "stopbits", "frame_gap")


class _Builder:
    def __init__(self, doc: Document, compiled: CompiledMapping,
                 offline: list[Problem] | None = None) -> None:
        self.doc = doc
        self.compiled = compiled
        self.folder = Path(doc.file).resolve().parent
        self.problems: list[Problem] = []
        self.offline = offline
        self.buses: dict[str, tuple[SerialBus, ModbusRtuSource]] = {}

    def at_signal(self, name: str, field: str, message: str) -> None:
        line, column = signal_position(self.doc, name, field)
        self.problems.append(Problem(self.doc.file, line, column, message))

    def at_source(self, source: str, field: str | None, message: str) -> None:
        path: tuple[str, ...] = ("sources", source) + ((field,) if field else ())
        self.problems.append(self.doc.problem(path, message))

    def missing(self, path: tuple[str, ...], message: str) -> None:
        """A file or variable that is not here: an error, or off-site a warning."""
        where = path if (*path, "__value__") not in self.doc.positions else (*path, "__value__")
        if self.offline is None:
            self.problems.append(self.doc.problem(where, message))
        else:
            self.offline.append(self.doc.problem(where, f"warning: {message}"))

    def signals_of(self, source: str) -> list[tuple[str, Signal]]:
        return [(n, s) for n, s in self.compiled.model.signals.items() if s.source == source]

    def serial(self, source_id: str, source: SerialSource) -> Driver | None:
        """A scanner or RFID reader: every frame is a sample of each of its signals."""
        names = []
        for name, spec in self.signals_of(source_id):
            if not self.misplaced(name, spec, ("address", "node", "type"), "a serial"):
                names.append(name)
        if not names:
            return None
        try:
            return SerialReaderDriver(source.to_driver(source_id, tuple(names)))
        except ConfigError as error:
            self.at_source(source_id, None, str(error))
            return None

    def misplaced(self, name: str, spec: Signal, fields: tuple[str, ...], kind: str) -> bool:
        wrong = [f for f in fields if getattr(spec, f) is not None]
        for field in wrong:
            self.at_signal(name, field, f"signal {name!r}: {field} does not apply to {kind} "
                                        f"source {spec.source!r}")
        return bool(wrong)

    def path(self, value: str | None) -> str | None:
        return None if value is None else str(self.folder / value)

    # --- Modbus ----------------------------------------------------------------------------

    def modbus_signals(self, source: str, kind: str) -> list[ModbusSignal]:
        out = []
        for name, spec in self.signals_of(source):
            if self.misplaced(name, spec, _OPCUA_ONLY, kind):
                continue
            if spec.address is None:
                line, column = signal_position(self.doc, name, "source")
                self.problems.append(Problem(self.doc.file, line, column,
                                             f"signal {name!r}: address is required for "
                                             f"{kind} source {source!r}"))
                continue
            signal = spec.to_modbus(name)
            try:
                parse_signal(signal)
            except ConfigError as error:
                self.at_signal(name, "address", str(error))
                continue
            out.append(signal)
        return out

    def modbus_tcp(self, source_id: str, source: ModbusTcpSource) -> ModbusDriver | None:
        signals = self.modbus_signals(source_id, "modbus_tcp")
        if not signals:
            return None
        return self._modbus(source_id, source.to_driver(source_id, tuple(signals)), None)

    def modbus_rtu(self, source_id: str, source: ModbusRtuSource) -> ModbusDriver | None:
        port = source.port
        if port in self.buses:
            bus, first = self.buses[port]
            if any(getattr(first, f) != getattr(source, f) for f in _LINE):
                self.at_source(source_id, "port", f"source {source_id!r}: serial port {port} "
                               "is shared with other sources, which use other line settings")
                return None
        else:
            bus = SerialBus(port, baudrate=source.baudrate, bytesize=source.bytesize,
                            parity=source.parity, stopbits=source.stopbits,
                            timeout_s=source.timeout, frame_gap_s=source.frame_gap,
                            backoff=Backoff())
            self.buses[port] = (bus, source)
        signals = self.modbus_signals(source_id, "modbus_rtu")
        if not signals:
            return None
        return self._modbus(source_id, source.to_driver(source_id, tuple(signals)), bus)

    def _modbus(self, source_id: str, config: ModbusDeviceConfig,
                bus: SerialBus | None) -> ModbusDriver | None:
        try:
            return ModbusDriver(config, link=bus)
        except ConfigError as error:
            self.at_source(source_id, None, str(error))
            return None

    # --- OPC UA ----------------------------------------------------------------------------

    def opcua(self, source_id: str, source: OpcUaSource) -> OpcUaDriver | None:
        signals = []
        for name, spec in self.signals_of(source_id):
            if self.misplaced(name, spec, _NOT_OPCUA, "opcua"):
                continue
            if spec.type is not None and spec.type not in OPCUA_TYPES:
                self.at_signal(name, "type", f"signal {name!r}: an OPC UA type is one of "
                               f"{', '.join(OPCUA_TYPES)} (got {spec.type!r})")
                continue
            if spec.node is None:
                line, column = signal_position(self.doc, name, "source")
                self.problems.append(Problem(self.doc.file, line, column,
                                             f"signal {name!r}: node is required for opcua "
                                             f"source {source_id!r}"))
                continue
            signal = spec.to_opcua(name)
            try:
                check_signal(signal)
            except ConfigError as error:
                self.at_signal(name, "node", str(error))
                continue
            signals.append(signal)
        password = self.password(source_id, source)
        if not signals:
            return None
        config = source.to_driver(source_id, tuple(signals), folder=self.folder,
                                  password=password)
        security = ("sources", source_id, "security")
        for field, value in (("certificate", config.security.certificate),
                             ("private_key", config.security.private_key)):
            if value is not None and not Path(value).is_file():
                self.missing((*security, field), f"source {source_id!r}: security "
                             f"{field}: no file {value}")
        if config.security.trust_dir is not None and not Path(config.security.trust_dir).is_dir():
            self.missing((*security, "trust"), f"source {source_id!r}: security trust: "
                         f"no folder {config.security.trust_dir}")
        try:
            return OpcUaDriver(config)
        except ConfigError as error:
            self.at_source(source_id, None, str(error))
            return None

    def password(self, source_id: str, source: OpcUaSource) -> str | None:
        if source.password_env and source.password_file:
            self.at_source(source_id, "password_file", f"source {source_id!r}: give "
                           "password_env or password_file, not both")
            return None
        if source.password_env:
            value = os.environ.get(source.password_env)
            if value is None:
                self.missing(("sources", source_id, "password_env"), f"source {source_id!r}: "
                             f"environment variable {source.password_env} is not set")
            return value
        if source.password_file:
            file = self.path(source.password_file)
            assert file is not None
            try:
                return Path(file).read_text().rstrip("\r\n")
            except OSError as error:
                self.missing(("sources", source_id, "password_file"), f"source {source_id!r}: "
                             f"cannot read password file {file}: {error.strerror}")
        return None


def build_drivers(doc: Document, compiled: CompiledMapping, *,
                  offline: list[Problem] | None = None) -> list[Driver]:
    """One driver per source that has signals; raises `MappingError` listing every problem.
    With `offline`, files and variables that are not here are warnings added to it."""
    builder = _Builder(doc, compiled, offline)
    drivers: list[Driver] = []
    for source_id, source in compiled.model.sources.items():
        driver: Driver | None
        if isinstance(source, ModbusTcpSource):
            driver = builder.modbus_tcp(source_id, source)
        elif isinstance(source, ModbusRtuSource):
            driver = builder.modbus_rtu(source_id, source)
        elif isinstance(source, SerialSource):
            driver = builder.serial(source_id, source)
        else:
            driver = builder.opcua(source_id, source)
        if driver is not None:
            drivers.append(driver)
    for source_id, source in compiled.model.sources.items():
        if isinstance(source, SerialSource) and source.port in builder.buses:
            builder.at_source(source_id, "port", f"source {source_id!r}: serial port "
                              f"{source.port} is also a Modbus RTU bus; one port, one protocol")
    if builder.problems:
        raise MappingError(builder.problems)
    _stagger([d for d in drivers if isinstance(d, ModbusDriver)])
    return drivers


def _stagger(drivers: list[ModbusDriver]) -> None:
    """Spread the first polls of the Modbus devices over their shortest interval."""
    count = len(drivers)
    for index, driver in enumerate(drivers):
        shortest = min((g.interval_s for g in driver.plan), default=0.0)
        driver.stagger_s = shortest * index / count
