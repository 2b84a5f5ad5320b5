"""The board's colours pass WCAG AA: every CSS rule that sets both a text colour and a
background, and each text colour used on the page's white, reaches 4.5:1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parents[2] / "hub" / "board" / "static" / "board.css").read_text()
ROOT = dict(re.findall(r"(--[a-z-]+):\s*(#[0-9a-fA-F]{3,6})", CSS))
WHITE = "#ffffff"


def _hex(value: str) -> str:
    value = value.strip().rstrip(";").split()[0]
    found = re.fullmatch(r"var\((--[a-z-]+)\)", value)
    return ROOT[found[1]] if found else value


def _luminance(colour: str) -> float:
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(c * 2 for c in colour)
    channels = [int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _pairs() -> list[tuple[str, str, str]]:
    pairs = []
    for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", CSS):
        colour = re.search(r"(?<![-\w])color:\s*([^;]+)", body)
        background = re.search(r"background:\s*([^;]+)", body)
        if colour and background and "#" in _hex(background[1]) + _hex(colour[1]):
            pairs.append((selector.strip(), _hex(colour[1]), _hex(background[1])))
    return pairs


def test_the_css_sets_colour_pairs() -> None:
    assert len(_pairs()) >= 8  # badges, status, header, buttons


@pytest.mark.parametrize(("selector", "colour", "background"), _pairs())
def test_every_colour_pair_reaches_aa(selector: str, colour: str, background: str) -> None:
    assert contrast(colour, background) >= 4.5, (selector, colour, background)


@pytest.mark.parametrize("name", ["--fg", "--muted", "--run", "--pause", "--done", "--abort",
                                  "--ready"])
def test_text_colours_on_white_and_on_a_paused_cell(name: str) -> None:
    assert contrast(ROOT[name], WHITE) >= 4.5, name
    assert contrast(ROOT[name], "#fff4e0") >= 4.5, name  # a paused cell's background
    assert contrast(ROOT[name], "#fff0f0") >= 4.5, name  # a stale gateway's row


def test_links_and_the_header() -> None:
    link = re.search(r"\ba \{ color: (#[0-9a-f]{6})", CSS)
    assert link is not None and contrast(link[1], WHITE) >= 4.5
    assert contrast(WHITE, "#14213d") >= 4.5 and contrast("#e6e6e6", "#14213d") >= 4.5
