"""Safe YAML reading that remembers where every key and value stood: the one loader of every
YAML file keyop reads (mappings, gateway.yaml, hub.yaml).

PyYAML's safe composer builds the node tree; we turn it into plain Python values ourselves so
that we can (a) keep a `path → (line, column)` index for error messages, (b) refuse duplicate
keys, (c) refuse any tag outside the YAML core schema (no `!!python/...`), and (d) refuse anchors
and aliases, which is what makes alias bombs impossible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, where it stands: `file:line:col: message`."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    # The key path of the node the problem is about, when it is about one (not printed: each
    # file kind words its messages itself, hub.yaml's as `file:line:col: key.path: message`).
    path: Path | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class LocatedError(Exception):
    """A file that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))

_CORE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MAX_NODES = 100_000


@dataclass
class Document:
    """A YAML file's plain value plus where each path in it came from."""

    file: str
    value: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int, int]:
        """Line and column (1-based) of the deepest known node on `path`."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return (1, 1)

    def problem(self, path: Path, message: str) -> Problem:
        line, column = self.locate(path)
        return Problem(self.file, line, column, message)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader, kind: str, timestamps: bool) -> None:
        self.file = file
        self.kind = kind
        self.tags = (_CORE_TAGS | {_TIMESTAMP_TAG}) if timestamps else _CORE_TAGS
        self.loader = loader
        self.positions: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.seen: set[int] = set()

    def _at(self, node: yaml.Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, message, path))

    def build(self, node: yaml.Node, path: Path) -> Any:
        if id(node) in self.seen:
            self._at(node, path, f"anchors and aliases are not allowed in {self.kind}")
            return None
        self.seen.add(id(node))
        if len(self.seen) > MAX_NODES:
            raise LocatedError([Problem(self.file, 1, 1, f"more than {MAX_NODES} YAML nodes")])
        self.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if node.tag not in self.tags:
            self._at(node, path, f"tag {node.tag!r} is not allowed (plain YAML values only)")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _CORE_TAGS:
                self._at(key_node, path, "keys must be plain scalars")
                continue
            key = str(self.loader.construct_object(key_node))
            if key == "<<":
                self._at(key_node, path, f"merge keys ('<<') are not allowed in {self.kind}")
                continue
            if key in result:
                self._at(key_node, (*path, key), f"duplicate key {key!r}")
                continue
            child = (*path, key)
            self.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            self.positions[(*child, "__value__")] = (
                value_node.start_mark.line + 1,
                value_node.start_mark.column + 1,
            )
            result[key] = self.build(value_node, child)
            # The key's own position wins for messages about the key; keep it.
            self.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result


def load(
    text: str, file: str, kind: str = "a mapping file", *, timestamps: bool = False
) -> Document:
    """Parse YAML text safely; raise `LocatedError` with positions for anything refused.

    `kind` names the file in messages about what it may not hold ("anchors and aliases are not
    allowed in hub.yaml"). With `timestamps`, a bare YAML timestamp becomes a `datetime`
    instead of being refused.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise LocatedError([Problem(file, line, column, f"YAML: {error.problem}")]) from None
    except yaml.YAMLError as error:
        raise LocatedError([Problem(file, 1, 1, f"YAML: {error}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return Document(file, {}, {(): (1, 1)})
    builder = _Builder(file, loader, kind, timestamps)
    value = builder.build(node, ())
    if builder.problems:
        raise LocatedError(builder.problems)
    return Document(file, value, builder.positions)
