"""The documentation in docs/ agrees with the code: examples decode, tables match, links resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_architecture import ALLOWED, PACKAGES

from hub import routing
from hub.config import SupplierConfig
from sync import packet
from sync import packet_codec as codec

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKET_DOC = DOCS / "packet.md"
ARCHITECTURE_DOC = DOCS / "architecture.md"
USER_DOCS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _json_examples(path: Path) -> list[Any]:
    return [json.loads(block) for block in _JSON_BLOCK.findall(path.read_text())]


def _is_packet(obj: Any) -> bool:
    return isinstance(obj, dict) and "specversion" in obj


def test_every_json_example_parses_and_every_packet_decodes() -> None:
    examples = _json_examples(PACKET_DOC)
    packets = [obj for obj in examples if _is_packet(obj)]
    packets += [item for obj in examples if isinstance(obj, list) for item in obj]
    assert packets, "docs/packet.md shows no packet example"
    for obj in packets:
        codec.decode(json.dumps(obj))  # raises PacketError naming the field


def test_the_supplier_copy_is_what_the_hub_sends() -> None:
    # docs/packet.md "Example": the plant's packet, then the copy for a supplier allowed
    # public params only, with the station shown as "Welding cell 2".
    plant, supplier_copy = filter(_is_packet, _json_examples(PACKET_DOC))
    rules = SupplierConfig(
        partner_params=False,
        station_names={plant["data"]["equipment"]["path"]: "Welding cell 2"},
    )
    assert routing.redacted(plant, rules) == supplier_copy


def test_the_event_type_table_lists_exactly_the_v1_types() -> None:
    text = PACKET_DOC.read_text()
    section = text.split("## Event types", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(keyop\.[a-z_.]+)` \|", section, re.MULTILINE))
    assert listed == packet.EVENT_TYPES


def _import_table() -> dict[str, set[str]]:
    text = ARCHITECTURE_DOC.read_text()
    section = text.split("## Rooms and what each may import", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z_]+)/` \|.*\| ([^|]*) \|$", line)
        if match and match.group(1) in PACKAGES:
            table[match.group(1)] = set(re.findall(r"`([a-z_.]+)`", match.group(2)))
    return table


def test_the_architecture_table_is_the_one_the_architecture_test_enforces() -> None:
    documented = _import_table()
    enforced = {package: ALLOWED[package] - {package} for package in PACKAGES}
    assert documented == enforced


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_docs_point_only_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text
    for target in _LINK.findall(text):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
