"""`include:` in hub.yaml: more YAML files merged into it, e.g. the `api-keys.yaml` that
`keyop hub acl` writes, so key hashes are never copied by hand.

`include: api-keys.yaml` (or a list), relative to hub.yaml's folder. Each file is read with
the same safe loader (common/yamlsrc.py: no tags, anchors or aliases) and merged key by key
into hub.yaml: it may add keys, never change one hub.yaml (or an earlier include) sets, and may
add to suppliers hub.yaml names but not make new ones. Includes do not nest. Every key keeps
the file, line and column it came from, for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import yamlsrc

KEY = "include"
# Where a key may come from an included file without hub.yaml naming it first: nowhere new
# under these (a supplier exists because hub.yaml says so).
_NO_NEW = (("suppliers",),)

Where = tuple[str, int, int]


class IncludeError(ValueError):
    """An include that cannot be used; the message names the file, line and column."""


@dataclass
class Sources:
    """hub.yaml's value with its includes merged, and where each key path came from."""

    value: dict[str, Any]
    positions: dict[yamlsrc.Path, Where]

    def locate(self, path: yamlsrc.Path) -> Where:
        """File, line and column of the deepest known node on `path`."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return next(iter(self.positions.values()), ("<hub.yaml>", 1, 1))


def resolve(doc: yamlsrc.Document, base: Path) -> Sources:
    """hub.yaml `doc` with the files it includes (relative to `base`) merged in. Raises
    IncludeError, or yamlsrc.LocatedError for an included file that is not safe YAML."""
    value: dict[str, Any] = dict(doc.value)
    sources = Sources(value, {p: (doc.file, *lc) for p, lc in doc.positions.items()})
    names = value.pop(KEY, None)
    if names is None:
        return sources
    where = _at(sources, (KEY,))
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise IncludeError(f"{where}: include: expected a file name or a list of file names")
    for name in names:
        path = base / name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise IncludeError(f"{where}: include: cannot read {path}: {error.strerror}"
                               ) from None
        extra = yamlsrc.load(text, str(path), kind="an included hub.yaml file",
                             timestamps=True)
        if not isinstance(extra.value, dict):
            raise IncludeError(f"{path}:1:1: (top): expected a mapping at the top")
        if KEY in extra.value:
            line, column = extra.locate((KEY,))
            raise IncludeError(f"{path}:{line}:{column}: include: an included file cannot "
                               "include others")
        _merge(sources, value, extra, ())
    return sources


def _at(sources: Sources, path: yamlsrc.Path) -> str:
    file, line, column = sources.locate(path)
    return f"{file}:{line}:{column}"


def _merge(sources: Sources, target: dict[str, Any], extra: yamlsrc.Document,
           path: yamlsrc.Path) -> None:
    node = extra.value
    for part in path:
        node = node[part]
    for key, item in node.items():
        child = (*path, key)
        line, column = extra.locate(child)
        dotted = ".".join(str(p) for p in child)
        if key not in target:
            if path in _NO_NEW:
                raise IncludeError(f"{extra.file}:{line}:{column}: {dotted}: not in hub.yaml "
                                   f"(an included file adds to the {path[-1]} hub.yaml names)")
            target[key] = item
            for known, (l_, c_) in extra.positions.items():
                if known[:len(child)] == child:
                    sources.positions.setdefault(known, (extra.file, l_, c_))
        elif isinstance(target[key], dict) and isinstance(item, dict):
            _merge(sources, target[key], extra, child)
        else:
            raise IncludeError(f"{extra.file}:{line}:{column}: {dotted}: already set at "
                               f"{_at(sources, child)} (an included file only adds keys)")
