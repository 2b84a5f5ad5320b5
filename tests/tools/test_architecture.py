"""The folder rules of docs/architecture.md, read from the imports themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The production rooms: the two daemons, what they share, and the simulators they are tested on.
PRODUCTION = ("drivers", "mapping", "edge_store", "common", "sync", "hub", "gateway",
              "simulators")
# The tool rooms: the `keyop` command line, the benchmarks, the development stack, and the
# example configs with the JSON Schemas (data the tools read; no daemon depends on them).
TOOLS = ("cli", "bench", "devstack", "config")
PACKAGES = PRODUCTION + TOOLS
# The edge daemon's rooms; they never import the hub.
EDGE = ("drivers", "mapping", "edge_store", "sync", "gateway")

# What each package may import from the project (its own package is always allowed).
ALLOWED: dict[str, set[str]] = {
    "drivers": set(),
    "mapping": {"drivers.base", "drivers.settings", "sync.packet", "common"},
    "edge_store": set(),
    "common": {"sync.packet"},
    "sync": {"edge_store", "common"},
    "hub": {"sync.packet", "sync.packet_codec", "sync.topics", "common"},
    "simulators": {"drivers.framing", "sync.packet"},
    "gateway": {"drivers", "mapping", "edge_store", "common", "sync"},
    "devstack": {*PRODUCTION, "config"},
    "bench": {*PRODUCTION, "devstack", "config"},
    "cli": set(PACKAGES),
    "config": set(),
}
# (who, the rooms they never import), each rule read from the imports themselves and checked
# against ALLOWED, so widening the table cannot quietly break one.
FORBIDDEN: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "production rooms never import the tools": (PRODUCTION, set(TOOLS)),
    "the edge never imports the hub": (EDGE, {"hub"}),
    "nothing imports the command line": (tuple(p for p in PACKAGES if p != "cli"), {"cli"}),
    "only the tools import the edge daemon": (
        tuple(p for p in PRODUCTION if p != "gateway"), {"gateway"}),
}
# The engine's modules stay pure: no I/O, no clock, no randomness.
PURE = ("engine", "station", "triggers", "expr", "filters", "materials", "replay", "snapshot")
IMPURE_IMPORTS = {"time", "asyncio", "socket", "os", "pathlib", "subprocess", "random",
                  "threading", "sqlalchemy", "paho"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in PACKAGES:  # `from sync import packet` imports sync.packet
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def _project(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in PACKAGES else None


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_architecture_allows(package: str) -> None:
    allowed = ALLOWED[package]
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = _project(name)
            if top is None or top == package:
                continue
            if not any(name == a or name.startswith(a + ".") or a == top for a in allowed):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("rule", FORBIDDEN)
def test_rooms_never_import_what_a_rule_forbids(rule: str) -> None:
    importers, forbidden = FORBIDDEN[rule]
    in_table = [f"ALLOWED[{p!r}] lets it import {a}" for p in importers
                for a in sorted(ALLOWED[p]) if a.split(".")[0] in forbidden]
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package in importers
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imports(path))
        if _project(name) in forbidden
    ]
    assert not in_table + offenders, "\n".join(in_table + offenders)


@pytest.mark.parametrize("module", PURE)
def test_the_mapping_engine_does_no_io_and_reads_no_clock(module: str) -> None:
    names = _imports(ROOT / "mapping" / f"{module}.py")
    assert not {n.split(".")[0] for n in names} & IMPURE_IMPORTS, names
