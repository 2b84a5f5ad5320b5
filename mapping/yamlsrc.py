"""Safe YAML reading that remembers where every key and value stood.

PyYAML's safe composer builds the node tree; we turn it into plain Python values ourselves so
that we can (a) keep a `path → (line, column)` index for error messages, (b) refuse duplicate
keys, (c) refuse any tag outside the YAML core schema (no `!!python/...`), and (d) refuse anchors
and aliases, which is what makes alias bombs impossible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from mapping.errors import MappingError, Problem

Path = tuple[str | int, ...]

_CORE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
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
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.positions: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.seen: set[int] = set()

    def _at(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(self.file, mark.line + 1, mark.column + 1, message))

    def build(self, node: yaml.Node, path: Path) -> Any:
        if id(node) in self.seen:
            self._at(node, "anchors and aliases are not allowed in a mapping file")
            return None
        self.seen.add(id(node))
        if len(self.seen) > MAX_NODES:
            raise MappingError([Problem(self.file, 1, 1, f"more than {MAX_NODES} YAML nodes")])
        self.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if node.tag not in _CORE_TAGS:
            self._at(node, f"tag {node.tag!r} is not allowed (plain YAML values only)")
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
                self._at(key_node, "keys must be plain scalars")
                continue
            key = str(self.loader.construct_object(key_node))
            if key == "<<":
                self._at(key_node, "merge keys ('<<') are not allowed in a mapping file")
                continue
            if key in result:
                self._at(key_node, f"duplicate key {key!r}")
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


def load(text: str, file: str) -> Document:
    """Parse YAML text safely; raise `MappingError` with positions for anything refused."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise MappingError([Problem(file, line, column, f"YAML: {error.problem}")]) from None
    except yaml.YAMLError as error:
        raise MappingError([Problem(file, 1, 1, f"YAML: {error}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return Document(file, {}, {(): (1, 1)})
    builder = _Builder(file, loader)
    value = builder.build(node, ())
    if builder.problems:
        raise MappingError(builder.problems)
    return Document(file, value, builder.positions)
