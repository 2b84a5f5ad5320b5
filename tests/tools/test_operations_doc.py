"""docs/operations.md names metrics and log lines that exist, and the README links to it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text()
ROOMS = ("gateway", "hub", "edge_store", "sync", "common", "drivers")
SOURCES = "\n".join(p.read_text() for room in ROOMS
                    for p in (ROOT / room).rglob("*.py"))


def test_readme_links_to_the_operations_page() -> None:
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()


def test_every_metric_named_exists() -> None:
    names = set(re.findall(r"`(keyop_[a-z_]+)`", DOC))
    assert len(names) >= 10
    missing = {n for n in names if f'"{n.removesuffix("_total")}"' not in SOURCES}
    assert not missing, missing


def test_every_log_line_quoted_is_logged_somewhere() -> None:
    table = DOC.split("The lines a night shift will meet:")[1].split("## ")[0]
    quoted = re.findall(r"^\| `([^`]+)`(?: / `([^`]+)`)?", table, flags=re.M)
    lines = [text for pair in quoted for text in pair if text]
    assert len(lines) >= 12
    for line in lines:
        # The constant start of the message, before its first field or placeholder.
        head = re.split(r" \(|\.\.\.| …|…| [A-Z]+ |: %| [a-z_]+=", line)[0].strip()
        assert head and head in SOURCES, (line, head)
