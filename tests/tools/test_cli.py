"""The command line as an integrator uses it: refusing bad config, checking, schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sync.packet_schema import json_schema

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"


def keyop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def _gateway_with_mapping(tmp_path: Path, mapping_text: str) -> Path:
    (tmp_path / "mapping.yaml").write_text(mapping_text)
    gateway = (CONFIG / "gateway.yaml").read_text().replace(
        "path: ../var/edge-07.outbox.db", "path: outbox.db")
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway)
    return path


def test_bad_mapping_is_refused_at_start_without_touching_the_outbox(tmp_path: Path) -> None:
    text = (CONFIG / "mapping.yaml").read_text()
    text = text.replace("start: rising(press.busy)", "start: rising(press.bussy)")
    text = text.replace('type: uint16, interval: 20ms}\n  press.order',
                        'type: float128, interval: 20ms}\n  press.order')
    config = _gateway_with_mapping(tmp_path, text)
    result = keyop("run", "-c", str(config))
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(tmp_path))]
    signal_line = next(i for i, t in enumerate(text.splitlines(), 1) if "press.bussy" in t)
    type_line = next(i for i, t in enumerate(text.splitlines(), 1) if "float128" in t)
    column = text.splitlines()[signal_line - 1].index("press.bussy") + 1
    type_column = text.splitlines()[type_line - 1].index("float128") + 1
    mapping = str(tmp_path / "mapping.yaml")
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(
        f"{mapping}:{type_line}:{type_column}: signals.press.scrap.type: Input should be "
    ) and lines[0].endswith("(got 'float128')")
    assert lines[1] == (
        f"{mapping}:{signal_line}:{column}: stations.press-1.start: unknown signal "
        "'press.bussy' (did you mean 'press.busy'?)"
    )
    assert "refusing to start (2 problem(s))" in result.stderr
    assert not (tmp_path / "outbox.db").exists()


def test_bad_address_is_reported_at_the_signal(tmp_path: Path) -> None:
    text = (CONFIG / "mapping.yaml").read_text().replace('address: "hr:2"', 'address: "hx:2"')
    config = _gateway_with_mapping(tmp_path, text)
    result = keyop("check", str(config))
    assert result.returncode == 1
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "hx:2" in t)
    assert f"mapping.yaml:{line}:" in result.stderr
    assert "press.scrap" in result.stderr and "expected hr:N" in result.stderr


def test_check_accepts_every_example_config() -> None:
    examples = [*sorted(CONFIG.glob("*mapping*.yaml")), CONFIG / "gateway.yaml"]
    result = keyop("check", *map(str, examples))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(examples) >= 3


def test_packet_schema_copy_is_in_sync() -> None:
    result = keyop("schema", "packet")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert printed == json_schema()
    assert json.loads((CONFIG / "packet.schema.json").read_text()) == printed, (
        "config/packet.schema.json is stale: run "
        "`keyop schema packet > config/packet.schema.json`"
    )


def test_mapping_schema_copy_is_in_sync_and_examples_point_at_it() -> None:
    result = keyop("schema", "mapping")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert json.loads((CONFIG / "mapping.schema.json").read_text()) == printed, (
        "config/mapping.schema.json is stale: run `keyop schema mapping > "
        "config/mapping.schema.json`"
    )
    assert "for" in printed["$defs"]["TriggerSpec"]["properties"]
    for example in CONFIG.glob("*mapping*.yaml"):
        first = example.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), example
