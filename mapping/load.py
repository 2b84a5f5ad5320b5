"""Read a mapping file, check everything, and compile it; every problem is reported at once."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable
from pathlib import Path as FsPath
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from mapping import yamlsrc
from mapping.engine import CompiledMapping, CompiledStation, SignalOrigin
from mapping.errors import MappingError, Problem
from mapping.expr import ExpressionError, compile_expression
from mapping.model import MappingFile, Plant, Station
from mapping.sources import SIGNAL_ADAPTER, SOURCE_ADAPTER, Signal, Source
from mapping.types import Id, SignalName
from mapping.yamlsrc import Document, Path

MAX_FILE_BYTES = 4 * 1024 * 1024


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _value_path(doc: Document, path: Path) -> Path:
    value = (*path, "__value__")
    return value if value in doc.positions else path


def validation_problems(
    doc: Document, error: ValidationError, prefix: Path = ()
) -> list[Problem]:
    """Turn pydantic's errors into `file:line:col` problems pointing at the offending YAML."""
    problems = []
    for item in error.errors():
        loc: tuple[str | int, ...] = (*prefix, *item["loc"])
        kind = item["type"]
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            where = loc
        elif kind in ("extra_forbidden", "missing"):
            where = loc if kind == "extra_forbidden" else loc[:-1]
        else:
            where = _value_path(doc, loc)
        # Drop pydantic's union branch names ("function-after[...]", "int") from the path.
        shown = ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in (
            "int", "str", "float", "bool"))))
        if kind == "extra_forbidden":
            message = f"{shown}: unknown field {loc[-1]!r}"
        elif kind == "missing":
            message = f"{shown}: required field is missing"
        else:
            message = f"{shown}: {item['msg'].removeprefix('Value error, ')}"
            given = item.get("input")
            if isinstance(given, str | int | float | bool) and kind != "value_error":
                message += f" (got {given!r})"
        problems.append(doc.problem(where, message))
    # A union with several failing branches repeats itself; keep each message once.
    unique = {str(p): p for p in problems}
    return list(unique.values())


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
        self.problems: list[Problem] = []

    def at(self, path: Path, message: str, offset: int = 0) -> None:
        line, column = self.doc.locate(_value_path(self.doc, path))
        self.problems.append(Problem(self.doc.file, line, column + offset, message))

    def signal_ref(self, path: Path, name: str) -> None:
        if name not in self.signal_names:
            self.at(path, f"unknown signal {name!r}{_suggest(name, self.signal_names)}")

    def check_signals(self) -> None:
        for name, signal in self.signals.items():
            if signal.source not in self.source_names:
                self.at(
                    ("signals", name, "source"),
                    f"signal {name!r}: unknown source {signal.source!r}"
                    f"{_suggest(signal.source, self.source_names)}",
                )

    def timezone(self) -> ZoneInfo | None:
        if self.plant is None:
            return None
        try:
            return ZoneInfo(self.plant.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.at(("plant", "timezone"), f"unknown time zone {self.plant.timezone!r}")
            return None

    def station(self, station_id: str, spec: Station) -> CompiledStation | None:
        base: Path = ("stations", station_id)
        self.signal_ref((*base, "order", "signal"), spec.order.signal)
        if isinstance(spec.order.planned, str):
            self.signal_ref((*base, "order", "planned"), spec.order.planned)
        try:
            spec.order.format.format(value=1)
        except (KeyError, IndexError, ValueError) as error:
            self.at((*base, "order", "format"), f"order format must use {{value}} only ({error})")
        self.signal_ref((*base, "counters", "good", "signal"), spec.counters.good.signal)
        if spec.counters.scrap:
            self.signal_ref((*base, "counters", "scrap", "signal"), spec.counters.scrap.signal)
        for name, param in spec.params.items():
            self.signal_ref((*base, "params", name, "signal"), param.signal)
        start_path = (*base, "start")
        try:
            start = compile_expression(spec.start, self.signal_names)
        except ExpressionError as error:
            # The column points into the expression (plus one for an opening quote).
            quoted = self._quoted(start_path)
            self.at(start_path, f"start: {error}", error.offset + quoted)
            return None
        plant = self.plant
        parts = (plant.site, plant.area, plant.line) if plant else ()
        path = spec.equipment.path or "/".join(
            part for part in (*parts, spec.equipment.cell or station_id) if part
        )
        signals = {spec.order.signal, spec.counters.good.signal, *start.signals}
        if spec.counters.scrap:
            signals.add(spec.counters.scrap.signal)
        return CompiledStation(station_id, spec, path, start, frozenset(signals))

    def _quoted(self, path: Path) -> int:
        line, column = self.doc.locate(_value_path(self.doc, path))
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
    checker = _Checker(doc, plant, sources, signals, signal_names, source_names)
    checker.check_signals()
    zone = checker.timezone()
    compiled = [checker.station(key, spec) for key, spec in stations.items()]
    problems += checker.problems
    if problems or zone is None:
        raise MappingError(problems)
    model = MappingFile.model_validate(doc.value)
    origins = {
        name: SignalOrigin(model.sources[s.source].protocol.split("_")[0], s.source, s.address)
        for name, s in model.signals.items()
    }
    return CompiledMapping(model, tuple(c for c in compiled if c is not None), origins, zone)


def read_document(path: str | FsPath) -> Document:
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
    return yamlsrc.load(text, file)


def load_mapping(path: str | FsPath) -> tuple[Document, CompiledMapping]:
    """Read, check and compile a mapping file."""
    doc = read_document(path)
    return doc, compile_document(doc)


def signal_position(doc: Document, signal: str, field: str) -> tuple[int, int]:
    """Where a signal's field stands, for errors found later (e.g. by a driver's own parser)."""
    return doc.locate(_value_path(doc, ("signals", signal, field)))


