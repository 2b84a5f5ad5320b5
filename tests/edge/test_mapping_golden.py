"""Golden mapping cases, one folder each under mapping_cases/:

- `mapping.yaml` + `samples.jsonl` + `expected.jsonl`: replaying the samples gives exactly the
  expected packets (regenerate after a deliberate change with `keyop replay`);
- `bad/NN-name/mapping.yaml` + `error.txt`: the file is refused with exactly those
  `file:line:col: message` lines;
- `warn/NN-name/mapping.yaml` + `warnings.txt`: the file is accepted, with exactly those
  warnings.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cli.record import replay_file
from mapping.errors import MappingError
from mapping.load import load_mapping

CASES = Path(__file__).resolve().parent / "mapping_cases"
GOOD = sorted(p for p in CASES.iterdir() if (p / "expected.jsonl").exists())
BAD = sorted((CASES / "bad").iterdir())
WARN = sorted((CASES / "warn").iterdir())


@pytest.mark.parametrize("case", GOOD, ids=[p.name for p in GOOD])
def test_replay_gives_the_expected_packets(case: Path) -> None:
    out = io.StringIO()
    replay_file(case / "mapping.yaml", case / "samples.jsonl", out)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    assert got == expected


@pytest.mark.parametrize("case", GOOD, ids=[p.name for p in GOOD])
def test_replay_is_deterministic(case: Path) -> None:
    runs = []
    for _ in range(2):
        out = io.StringIO()
        replay_file(case / "mapping.yaml", case / "samples.jsonl", out)
        runs.append(out.getvalue())
    assert runs[0] == runs[1] and runs[0]


def test_there_are_at_least_thirty_malformed_cases() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("case", BAD, ids=[p.name for p in BAD])
def test_malformed_mapping_is_refused_with_positions(case: Path) -> None:
    expected = (case / "error.txt").read_text().splitlines()
    assert expected, "error.txt must list the expected problems"
    cwd = Path.cwd()
    os.chdir(case)  # problems name the file as given: mapping.yaml
    try:
        with pytest.raises(MappingError) as caught:
            load_mapping("mapping.yaml")
    finally:
        os.chdir(cwd)
    got = [str(problem) for problem in caught.value.problems]
    assert got == expected
    for line in got:
        file, row, column, _ = line.split(":", 3)
        assert file == "mapping.yaml" and int(row) >= 1 and int(column) >= 1


@pytest.mark.parametrize("case", GOOD, ids=[p.name for p in GOOD])
def test_every_replayed_packet_is_a_valid_v1_packet(case: Path) -> None:
    from sync import packet as pk
    from sync import packet_codec as codec

    lines = (case / "expected.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        replayed = json.loads(line)
        event = {
            "specversion": "1.0", "id": "01JDA5Q1Y4S7M2R8K3VZC6TB9E", "source": "plant1/edge-07",
            "type": replayed["type"], "subject": replayed["subject"], "time": replayed["time"],
            "recordedtime": replayed["time"], "sequence": pk.format_sequence(replayed["sequence"]),
            "sourceepoch": "01JCZ0K3M9B4X2W7Q5N8D1F6HA", "datacontenttype": "application/json",
            "dataschema": "keyop:packet:1", "data": replayed["data"],
        }
        codec.from_obj(event)


@pytest.mark.parametrize("case", WARN, ids=[p.name for p in WARN])
def test_questionable_mapping_is_accepted_with_warnings(case: Path) -> None:
    expected = (case / "warnings.txt").read_text().splitlines()
    assert expected, "warnings.txt must list the expected warnings"
    cwd = Path.cwd()
    os.chdir(case)
    try:
        _, compiled = load_mapping("mapping.yaml")
    finally:
        os.chdir(cwd)
    assert [str(problem) for problem in compiled.warnings] == expected
