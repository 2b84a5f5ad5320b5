"""docs/mapping.md is complete and true: every field, operator and function is there, every
whole mapping it shows is accepted, and its recording replays into the packets it describes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from common import yamlsrc
from mapping import model, serial_source, sources
from mapping.expr import EDGES
from mapping.filters import FilterSpec
from mapping.load import compile_document
from mapping.replay import replay, sample_from_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "mapping.md"
TEXT = DOC.read_text()
_YAML = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_JSONL = re.compile(r"^```jsonl\n(.*?)^```", re.MULTILINE | re.DOTALL)
MODELS: list[type[BaseModel]] = [
    model.MappingFile, model.Plant, sources.ModbusTcpSource, sources.ModbusRtuSource,
    sources.OpcUaSource, sources.OpcUaSecurity, serial_source.SerialSource,
    serial_source.Framing, sources.Signal, FilterSpec, model.Station, model.OperationRef,
    model.EquipmentRef, model.OrderContext, model.TriggerSpec, model.PauseSpec, model.Counters,
    model.Counter, model.Progress, model.Stalled, model.AlarmSpec, model.ParamSpec,
    model.MaterialPoint,
]
EXAMPLES = [block for block in _YAML.findall(TEXT) if block.startswith("version: 1")]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls: type[BaseModel]) -> None:
    missing = [field.alias or name for name, field in cls.model_fields.items()
               if not re.search(rf"`([a-z_<>]+\.)*{field.alias or name}(`|\.| |:)", TEXT)]
    assert not missing


def test_every_operator_and_function_is_documented() -> None:
    for token in ("or", "and", "not", "==", "!=", "<", "<=", ">", ">=", "true", "false"):
        assert f"`{token}" in TEXT or f" {token} " in TEXT, token
    for function in EDGES:
        assert f"`{function}(x)`" in TEXT, function


def test_the_severities_and_param_classes_are_the_ones_accepted() -> None:
    for value in ("info", "warning", "minor", "major", "critical"):
        model.AlarmSpec.model_validate({"when": "x", "severity": value})
        assert f"`{value}`" in TEXT
    for value in ("public", "partner", "restricted", "local"):
        model.ParamSpec.model_validate({"signal": "x", "class": value})


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"example-{n}" for n in range(len(EXAMPLES))])
def test_every_whole_example_is_accepted(block: str) -> None:
    compile_document(yamlsrc.load(block, "docs/mapping.md"))


def test_there_is_a_worked_example_per_station_kind() -> None:
    assert len(EXAMPLES) >= 4


def test_the_example_recording_replays() -> None:
    pulse = next(block for block in EXAMPLES if "count: rising(pedal)" in block)
    mapping = compile_document(yamlsrc.load(pulse, "docs/mapping.md"))
    rows = [json.loads(line) for line in _JSONL.findall(TEXT)[0].splitlines()]
    samples = [sample_from_json(row, rows[0]["time"]) for row in rows]
    drafts = list(replay(mapping, samples))
    assert [d.type for d in drafts] == [
        "keyop.station.context", "keyop.operation.started", "keyop.operation.scrapped",
        "keyop.operation.scrapped"]
    assert drafts[-1].data["quantities"]["scrap"] == 2
