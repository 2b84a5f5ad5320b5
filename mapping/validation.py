"""pydantic's validation errors as `file:line:col` problems, in the words a person expects."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from common.yamlsrc import Document, Path
from mapping.errors import Problem
from mapping.expr import SIGNAL_NAME
from sync.packet import ID_PATTERN


def suggest(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a close match among `choices`, else nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def value_path(doc: Document, path: Path) -> Path:
    """The path of a node's value (where a scalar's own position is kept), else the node's."""
    value = (*path, "__value__")
    return value if value in doc.positions else path


def _document_path(value: Any, loc: tuple[str | int, ...], keep_last: bool) -> Path:
    """The part of pydantic's error location that exists in the YAML.

    pydantic puts union branch names and discriminator tags into locations
    (`sources.plc.modbus_tcp.port`); they name no YAML node and are dropped. With `keep_last`,
    the final key stays even though it is absent (a missing or an unknown field).
    """
    node, path = value, []
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif last and keep_last:
            path.append(part)
    return tuple(path)


# What a pattern means, in the words a person expects instead of the regular expression.
_PATTERN_WORDS = {
    ID_PATTERN: "an id is 1 to 64 lowercase letters, digits and '-', starting with a letter "
                "or digit",
    f"^{SIGNAL_NAME}$": "a signal name is letters, digits, '_' and '.', starting with a letter "
                        "or '_'",
    r"^opc\.tcp://": "an OPC UA endpoint starts with opc.tcp://",
}
# Keys that are refused with advice, not just as unknown.
_FIELD_ADVICE = {
    "password": "a password does not belong in this file: use password_file (a file holding "
                "it) or password_env (an environment variable holding it)",
}


def _allowed(item: Any) -> list[str]:
    """The values an enumerated field accepts, from pydantic's `literal_error`."""
    if item["type"] != "literal_error":
        return []
    return re.findall(r"'([^']*)'", str((item.get("ctx") or {}).get("expected", "")))


def _pattern_message(item: Any) -> str:
    pattern = (item.get("ctx") or {}).get("pattern", "")
    words = _PATTERN_WORDS.get(pattern)
    return words if words is not None else f"does not have the expected form ({pattern})"


_TYPE_ERRORS = frozenset({"string_type", "int_type", "float_type", "bool_type", "model_type",
                          "dict_type", "int_parsing", "float_parsing", "model_attributes_type"})


def validation_problems(
    doc: Document, error: ValidationError, prefix: Path = ()
) -> list[Problem]:
    """Turn pydantic's errors into `file:line:col` problems pointing at the offending YAML."""
    found: dict[Path, list[tuple[str, Problem]]] = {}
    for item in error.errors():
        kind = item["type"]
        raw: tuple[str | int, ...] = (*prefix, *item["loc"])
        is_key = bool(raw) and raw[-1] == "[key]"
        if is_key:
            raw = raw[:-1]
        loc = _document_path(doc.value, raw, keep_last=kind in ("extra_forbidden", "missing"))
        shown = ".".join(str(p) for p in loc)
        if kind == "extra_forbidden":
            advice = _FIELD_ADVICE.get(str(loc[-1])) if loc else None
            where, message = loc, f"{shown}: {advice or f'unknown field {loc[-1]!r}'}"
        elif kind == "missing":
            where, message = loc[:-1], f"{shown}: required field is missing"
        else:
            where = loc if is_key else value_path(doc, loc)
            text = (_pattern_message(item) if kind == "string_pattern_mismatch"
                    else item["msg"].removeprefix("Value error, "))
            message = f"{shown}: {text}"
            given = item.get("input")
            if isinstance(given, str | int | float | bool) and kind != "value_error":
                hint = suggest(given, _allowed(item)) if isinstance(given, str) else ""
                message += f" (got {given!r}{hint.replace(' (', ', ').rstrip(')')})"
        found.setdefault(loc, []).append((kind, doc.problem(where, message)))
    # A union (`start: "expr"` or a mapping) fails once per branch; when a branch says something
    # specific at or below a place, the other branch's "should be a string" there is noise.
    specific_at = [loc for loc, entries in found.items()
                   if any(kind not in _TYPE_ERRORS for kind, _ in entries)]
    problems: list[Problem] = []
    for loc, entries in found.items():
        for kind, problem in entries:
            noise = kind in _TYPE_ERRORS and any(
                other[: len(loc)] == loc for other in specific_at)
            if not noise and problem not in problems:
                problems.append(problem)
    return problems
