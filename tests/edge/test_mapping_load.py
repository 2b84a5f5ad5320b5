"""Mapping files that must be refused, each with the right file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapping.errors import MappingError
from mapping.load import load_mapping

CONFIG = Path(__file__).resolve().parents[2] / "config" / "mapping.yaml"
GOOD = CONFIG.read_text()


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "line3.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    return [str(p).replace(str(path), "line3.yaml") for p in caught.value.problems]


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_mapping_loads() -> None:
    _, compiled = load_mapping(CONFIG)
    assert [s.id for s in compiled.stations] == ["press-1"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("start: rising(press.busy)", "start: rising(press.bsy)",
         "start: unknown signal 'press.bsy'"),
        ("signal: press.good,", "signal: press.goods,", "unknown signal 'press.goods'"),
        ("type: uint32, interval: 20ms}\n  press.scrap", "type: uint33, interval: 20ms}\n"
         "  press.scrap", "type: Input should be"),
        ("bits: 32}", "bits: 33}", "bits: Input should be 16, 32 or 64 (got 33)"),
        ("interval: 20ms}\n  press.good", "interval: 20}\n  press.good",
         "expected a duration with a unit"),
        ("progress: {every: 5}", "progress: {every: 5, evry: 2}", "unknown field 'evry'"),
        ("source: press-1, address: \"co:0\"", "source: press-2, address: \"co:0\"",
         "unknown source 'press-2'"),
        ("start: rising(press.busy)", "start: explode(press.busy)", "unknown function 'explode'"),
        ("timezone: Europe/Berlin", "timezone: Mars/Olympus", "unknown time zone"),
        ("version: 1", "version: 2", "version: Input should be 1"),
    ],
)
def test_malformed_mapping_is_refused_with_position(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    first_line = new.splitlines()[0]
    assert problems[0].startswith(f"line3.yaml:{_line_of(text, first_line)}:"), problems
    assert expected in problems[0]


def test_start_expression_column_points_at_the_signal(tmp_path: Path) -> None:
    text = GOOD.replace("start: rising(press.busy)", "start: 'rising(press.bsy)'")
    (problem,) = _problems(tmp_path, text)
    line = _line_of(text, "press.bsy")
    column = text.splitlines()[line - 1].index("press.bsy") + 1
    assert problem.startswith(f"line3.yaml:{line}:{column}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nversion: 1\n", "line3.yaml:2:1: duplicate key 'version'"),
        ("version: !!python/object/apply:os.system ['true']\n", "line3.yaml:1:10: tag"),
        ("a: &x [1, 2]\nb: *x\n", "anchors and aliases are not allowed"),
        ("version: [1\n", "line3.yaml:2:1: YAML:"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
    ],
)
def test_unsafe_or_broken_yaml_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems
