"""Read a mapping file, check everything, and compile it; every problem is reported at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path as FsPath
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from mapping import yamlsrc
from mapping.engine import CompiledMapping, CompiledStation, SignalOrigin
from mapping.errors import MappingError, Problem
from mapping.expr import ExpressionError, compile_expression
from mapping.model import MappingFile, Station
from mapping.yamlsrc import Document, Path

MAX_FILE_BYTES = 4 * 1024 * 1024


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _value_path(doc: Document, path: Path) -> Path:
    value = (*path, "__value__")
    return value if value in doc.positions else path


def validation_problems(doc: Document, error: ValidationError) -> list[Problem]:
    """Turn pydantic's errors into `file:line:col` problems pointing at the offending YAML."""
    problems = []
    for item in error.errors():
        loc: tuple[str | int, ...] = tuple(item["loc"])
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
    def __init__(self, doc: Document, model: MappingFile) -> None:
        self.doc = doc
        self.model = model
        self.problems: list[Problem] = []

    def at(self, path: Path, message: str, offset: int = 0) -> None:
        line, column = self.doc.locate(_value_path(self.doc, path))
        self.problems.append(Problem(self.doc.file, line, column + offset, message))

    def signal_ref(self, path: Path, name: str) -> None:
        if name not in self.model.signals:
            self.at(path, f"unknown signal {name!r}{_suggest(name, self.model.signals)}")

    def run(self) -> tuple[tuple[CompiledStation, ...], ZoneInfo | None]:
        model = self.model
        for name, signal in model.signals.items():
            if signal.source not in model.sources:
                self.at(
                    ("signals", name, "source"),
                    f"signal {name!r}: unknown source {signal.source!r}"
                    f"{_suggest(signal.source, model.sources)}",
                )
        zone: ZoneInfo | None = None
        try:
            zone = ZoneInfo(model.plant.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.at(("plant", "timezone"), f"unknown time zone {model.plant.timezone!r}")
        stations = []
        for station_id, station in model.stations.items():
            compiled = self.station(station_id, station)
            if compiled is not None:
                stations.append(compiled)
        return tuple(stations), zone

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
            start = compile_expression(spec.start, lambda n: n in self.model.signals)
        except ExpressionError as error:
            # The column points into the expression (plus one for an opening quote).
            quoted = self._quoted(start_path)
            self.at(start_path, f"start: {error}", error.offset + quoted)
            return None
        plant = self.model.plant
        path = spec.equipment.path or "/".join(
            part for part in (plant.site, plant.area, plant.line, spec.equipment.cell or station_id)
            if part
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


def compile_document(doc: Document) -> CompiledMapping:
    """Validate a parsed document and compile it; raise `MappingError` listing every problem."""
    if not isinstance(doc.value, dict):
        raise MappingError([doc.problem((), "a mapping file must be a YAML mapping at the top")])
    try:
        model = MappingFile.model_validate(doc.value)
    except ValidationError as error:
        raise MappingError(validation_problems(doc, error)) from None
    checker = _Checker(doc, model)
    stations, zone = checker.run()
    if checker.problems or zone is None:
        raise MappingError(checker.problems)
    origins = {
        name: SignalOrigin(model.sources[s.source].protocol.split("_")[0], s.source, s.address)
        for name, s in model.signals.items()
    }
    return CompiledMapping(model, stations, origins, zone)


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


