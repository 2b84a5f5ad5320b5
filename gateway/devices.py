"""Build driver instances from a compiled mapping; driver config errors point into the YAML."""

from __future__ import annotations

from drivers.base import ConfigError, Driver
from drivers.modbus import (
    ModbusDeviceConfig,
    ModbusDriver,
    ModbusSignal,
    compile_plan,
    parse_signal,
)
from mapping.engine import CompiledMapping
from mapping.errors import MappingError, Problem
from mapping.load import signal_position
from mapping.yamlsrc import Document


def _modbus_signals(doc: Document, compiled: CompiledMapping, source: str) -> tuple[
    list[ModbusSignal], list[Problem]
]:
    signals, problems = [], []
    for name, spec in compiled.model.signals.items():
        if spec.source != source:
            continue
        signal = ModbusSignal(name, spec.address, spec.type, spec.interval)
        try:
            parse_signal(signal)
        except ConfigError as error:
            line, column = signal_position(doc, name, "address")
            problems.append(Problem(doc.file, line, column, str(error)))
            continue
        signals.append(signal)
    return signals, problems


def build_drivers(doc: Document, compiled: CompiledMapping) -> list[Driver]:
    """One driver per source that has signals; raises `MappingError` listing every problem."""
    drivers: list[Driver] = []
    problems: list[Problem] = []
    for source_id, source in compiled.model.sources.items():
        signals, found = _modbus_signals(doc, compiled, source_id)
        problems += found
        if not signals:
            continue
        config = ModbusDeviceConfig(
            name=source_id,
            host=source.host,
            port=source.port,
            unit_id=source.unit,
            timeout_s=source.timeout,
            signals=tuple(signals),
        )
        try:
            compile_plan(config.signals)
        except ConfigError as error:
            problems.append(doc.problem(("sources", source_id), str(error)))
            continue
        drivers.append(ModbusDriver(config))
    if problems:
        raise MappingError(problems)
    return drivers
