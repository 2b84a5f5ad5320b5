"""Read a mapping file, check everything, and compile it; every problem is reported at once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path as FsPath
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from common import yamlsrc
from common.yamlsrc import Document, LocatedError, Path
from mapping.engine import CompiledMapping, SignalOrigin
from mapping.errors import MappingError, Problem
from mapping.expr import ExpressionError, compile_expression, kind_words
from mapping.filters import SignalFilter
from mapping.materials import CompiledMaterialPoint
from mapping.model import (
    Counter,
    EquipmentRef,
    MappingFile,
    MaterialPoint,
    Plant,
    Station,
    Trigger,
    TriggerSpec,
)
from mapping.sources import SIGNAL_ADAPTER, SOURCE_ADAPTER, Signal, Source, value_kind
from mapping.station import (
    ABORT,
    ALARM_PREFIX,
    COMPLETE,
    COUNT_GOOD,
    COUNT_SCRAP,
    PAUSE,
    RESUME,
    START,
    CompiledStation,
)
from mapping.triggers import CompiledTrigger
from mapping.types import Id, SignalName
from mapping.validation import suggest, validation_problems, value_path

__all__ = ["compile_document", "load_mapping", "read_document", "signal_position",
           "validation_problems"]

MAX_FILE_BYTES = 4 * 1024 * 1024


class _Checker:
    """Cross-references and expressions, over whatever parts passed their own validation."""

    def __init__(
        self,
        doc: Document,
        plant: Plant | None,
        sources: dict[str, Source],
        signals: dict[str, Signal],
        signal_names: set[str],
        source_names: set[str],
    ) -> None:
        self.doc = doc
        self.plant = plant
        self.sources = sources
        self.signals = signals
        self.signal_names = signal_names
        self.source_names = source_names
        self.kinds = {name: value_kind(signal, sources.get(signal.source))
                      for name, signal in signals.items()}
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def at(self, path: Path, message: str, offset: int = 0, *, warning: bool = False) -> None:
        line, column = self.doc.locate(value_path(self.doc, path))
        if warning:
            self.warnings.append(Problem(self.doc.file, line, column + offset,
                                         f"warning: {message}"))
        else:
            self.problems.append(Problem(self.doc.file, line, column + offset, message))

    def kind_of(self, path: Path, name: str, wanted: str, hint: str = "") -> None:
        """A signal used where only one kind of value makes sense (a threshold, a counter)."""
        kind = self.kinds.get(name)
        if kind is not None and kind != wanted:
            field = ".".join(str(p) for p in path)
            self.at(path, f"{field}: {name!r} is {kind_words(kind)}, "
                    f"{hint or f'this needs {kind_words(wanted)} signal'}")

    def signal_ref(self, path: Path, name: str) -> None:
        if name not in self.signal_names:
            field = ".".join(str(p) for p in path)
            self.at(path, f"{field}: unknown signal {name!r}{suggest(name, self.signal_names)}")

    def check_signals(self) -> None:
        for name, signal in self.signals.items():
            if signal.source not in self.source_names:
                self.at(
                    ("signals", name, "source"),
                    f"signals.{name}.source: unknown source {signal.source!r}"
                    f"{suggest(signal.source, self.source_names)}",
                )

    def timezone(self) -> ZoneInfo | None:
        if self.plant is None:
            return None
        try:
            return ZoneInfo(self.plant.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = self.plant.timezone
            self.at(("plant", "timezone"), f"plant.timezone: unknown time zone {zone!r}")
            return None

    def trigger(self, path: Path, spec: Trigger, *, level: bool = False,
                pulse: bool = False) -> CompiledTrigger | None:
        """Compile one trigger; `level` triggers may not use rising/falling/changed, `pulse`
        ones (edge counting) must."""
        text_path = path if isinstance(spec, str) else (*path, "when")
        where = ".".join(str(p) for p in text_path)
        if isinstance(spec, TriggerSpec) and spec.signal is not None:
            self.signal_ref((*path, "signal"), spec.signal)
            self.kind_of((*path, "signal"), spec.signal, "number",
                         "thresholds need a number signal")
            return CompiledTrigger(
                text=f"{spec.signal} thresholds", signals=frozenset({spec.signal}), hold=spec.hold,
                signal=spec.signal, on_above=spec.above, off_below=spec.release_below,
                on_below=spec.below, off_above=spec.release_above,
            )
        text = spec if isinstance(spec, str) else spec.when or ""
        try:
            expression = compile_expression(text, self.signal_names, self.kinds)
        except ExpressionError as error:
            # The column points into the expression (plus one for an opening quote).
            self.at(text_path, f"{where}: {error}", error.offset + self._quoted(text_path))
            return None
        for message, offset in expression.warnings:
            self.at(text_path, f"{where}: {message}", offset + self._quoted(text_path),
                    warning=True)
        if level and expression.edges:
            self.at(text_path, f"{where}: needs a condition that "
                    "lasts (rising, falling and changed are true only for an instant)")
            return None
        if pulse and not expression.edges:
            self.at(text_path, f"{where}: counts edges: use rising(x), falling(x) or changed(x) "
                    "(a condition that lasts would count once per sample)")
            return None
        hold = spec.hold if isinstance(spec, TriggerSpec) else None
        return CompiledTrigger(text=text, signals=expression.signals, expression=expression,
                               hold=hold)

    def station(self, station_id: str, spec: Station) -> CompiledStation | None:
        base: Path = ("stations", station_id)
        station_path = f"stations.{station_id}"
        self.signal_ref((*base, "order", "signal"), spec.order.signal)
        if isinstance(spec.order.planned, str):
            self.signal_ref((*base, "order", "planned"), spec.order.planned)
        try:
            spec.order.format.format(value=1)
        except (KeyError, IndexError, ValueError) as error:
            self.at((*base, "order", "format"),
                    f"{station_path}.order.format: use {{value}} only (found {{{error}}})")
        pattern = None
        if spec.order.pattern is not None:
            try:
                pattern = re.compile(spec.order.pattern)
            except re.error as error:
                self.at((*base, "order", "pattern"), f"{station_path}.order.pattern: {error}")
        wanted: list[tuple[str, Path, Trigger | None, bool]] = []
        if spec.counters:
            for which, key, counter in (("good", COUNT_GOOD, spec.counters.good),
                                        ("scrap", COUNT_SCRAP, spec.counters.scrap)):
                if counter is not None:
                    self.counter((*base, "counters", which), counter)
                    if counter.count is not None:
                        wanted.append((key, (*base, "counters", which, "count"), counter.count,
                                       False))
        for name, param in spec.params.items():
            self.signal_ref((*base, "params", name, "signal"), param.signal)
        if spec.pause and spec.pause.reason:
            self.signal_ref((*base, "pause", "reason"), spec.pause.reason)
        wanted += [
            (START, (*base, "start"), spec.start, False),
            (COMPLETE, (*base, "complete"), spec.complete, False),
            (ABORT, (*base, "abort"), spec.abort, False),
            (PAUSE, (*base, "pause", "when"), spec.pause.when if spec.pause else None, True),
            (RESUME, (*base, "pause", "resume"), spec.pause.resume if spec.pause else None,
             False),
            *((f"{ALARM_PREFIX}{code}", (*base, "alarms", code, "when"), alarm.when, True)
              for code, alarm in spec.alarms.items()),
        ]
        triggers: dict[str, CompiledTrigger] = {}
        failed = False
        for key, path, trigger_spec, level in wanted:
            if trigger_spec is None:
                continue
            compiled = self.trigger(path, trigger_spec, level=level,
                                    pulse=key in (COUNT_GOOD, COUNT_SCRAP))
            if compiled is None:
                failed = True
            else:
                triggers[key] = compiled
        if failed:
            return None
        path_text = self.equipment_path(spec.equipment, station_id)
        return CompiledStation(station_id, spec, path_text, triggers, pattern)

    def counter(self, path: Path, counter: Counter) -> None:
        """A counter register must be a number; a bool input is counted by its edges."""
        name = counter.signal
        if name is None:
            return
        self.signal_ref((*path, "signal"), name)
        if self.kinds.get(name) == "bool":
            self.kind_of((*path, "signal"), name, "number",
                         f"not a counter register: count its edges with `count: rising({name})`")
        else:
            self.kind_of((*path, "signal"), name, "number", "a counter needs a number signal")

    def equipment_path(self, equipment: EquipmentRef, default_cell: str) -> str:
        plant = self.plant
        parts = (plant.site, plant.area, plant.line) if plant else ()
        return equipment.path or "/".join(
            part for part in (*parts, equipment.cell or default_cell) if part)

    def material(self, point_id: str, spec: MaterialPoint) -> CompiledMaterialPoint:
        self.signal_ref(("materials", point_id, "signal"), spec.signal)
        return CompiledMaterialPoint(point_id, spec, self.equipment_path(spec.equipment, point_id))

    def _quoted(self, path: Path) -> int:
        line, column = self.doc.locate(value_path(self.doc, path))
        try:
            text = FsPath(self.doc.file).read_text().splitlines()[line - 1]
        except (OSError, IndexError):
            return 0
        return 1 if column - 1 < len(text) and text[column - 1] in "'\"" else 0


class _Shell(BaseModel):
    """The top level alone; each section's entries are validated one by one after it."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    plant: Plant
    sources: dict[Id, Any]
    signals: dict[SignalName, Any]
    stations: dict[Id, Any]
    materials: dict[Id, Any] = {}


def _section(
    doc: Document, name: str, adapter: TypeAdapter[Any], problems: list[Problem]
) -> tuple[dict[str, Any], set[str]]:
    """Validate each entry of a section on its own, so one bad entry hides no other problem."""
    raw = doc.value.get(name)
    if not isinstance(raw, dict):
        return {}, set()
    valid: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            valid[key] = adapter.validate_python(value)
        except ValidationError as error:
            problems += validation_problems(doc, error, prefix=(name, key))
    return valid, set(raw)


def compile_document(doc: Document) -> CompiledMapping:
    """Validate a parsed document and compile it; raise `MappingError` listing every problem."""
    if not isinstance(doc.value, dict):
        raise MappingError([doc.problem((), "a mapping file must be a YAML mapping at the top")])
    problems: list[Problem] = []
    plant: Plant | None = None
    try:
        plant = _Shell.model_validate(doc.value).plant
    except ValidationError as error:
        problems += validation_problems(doc, error)
        raw_plant = doc.value.get("plant")
        with contextlib.suppress(ValidationError):
            plant = Plant.model_validate(raw_plant)
    sources, source_names = _section(doc, "sources", SOURCE_ADAPTER, problems)
    signals, signal_names = _section(doc, "signals", SIGNAL_ADAPTER, problems)
    stations, _ = _section(doc, "stations", TypeAdapter(Station), problems)
    materials, _ = _section(doc, "materials", TypeAdapter(MaterialPoint), problems)
    checker = _Checker(doc, plant, sources, signals, signal_names, source_names)
    checker.check_signals()
    zone = checker.timezone()
    compiled = [checker.station(key, spec) for key, spec in stations.items()]
    points = [checker.material(key, spec) for key, spec in materials.items()]
    problems += checker.problems
    if problems or zone is None:
        raise MappingError(problems + checker.warnings)  # warnings say "warning:" themselves
    model = MappingFile.model_validate(doc.value)
    filters = {
        name: SignalFilter.from_spec(signal.filter)
        for name, signal in model.signals.items()
        if signal.filter is not None
    }
    digest = hashlib.sha256(json.dumps(doc.value, sort_keys=True).encode()).hexdigest()
    origins = {
        name: SignalOrigin(model.sources[s.source].protocol.split("_")[0], s.source, s.ref)
        for name, s in model.signals.items()
    }
    return CompiledMapping(
        model, tuple(c for c in compiled if c is not None), origins, zone, filters, digest,
        tuple(points), tuple(checker.warnings),
    )


def read_document(path: str | FsPath, kind: str = "a mapping file") -> Document:
    """Read a YAML file keyop is configured by (a mapping, gateway.yaml) with the located loader;
    `kind` names it in what it may not hold."""
    file = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except OSError as error:
        raise MappingError([Problem(file, 1, 1, f"cannot read: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise MappingError([Problem(file, 1, 1, f"file larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MappingError([Problem(file, 1, 1, f"not UTF-8 text ({error.reason})")]) from None
    try:
        return yamlsrc.load(text, file, kind)
    except LocatedError as error:
        raise MappingError(error.problems) from None


def load_mapping(path: str | FsPath) -> tuple[Document, CompiledMapping]:
    """Read, check and compile a mapping file."""
    doc = read_document(path)
    return doc, compile_document(doc)


def signal_position(doc: Document, signal: str, field: str) -> tuple[int, int]:
    """Where a signal's field stands, for errors found later (e.g. by a driver's own parser)."""
    return doc.locate(value_path(doc, ("signals", signal, field)))


