"""`keyop check|replay|record --help` describe the command and every argument."""

from __future__ import annotations

import argparse

import pytest

from cli.main import build_parser


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", ["check", "replay", "record"])
def test_every_argument_is_described(name: str) -> None:
    parser = _subparser(name)
    assert parser.description and "docs/mapping.md" in parser.description
    undescribed = [action.dest for action in parser._actions
                   if not isinstance(action, argparse._HelpAction) and not action.help]
    assert undescribed == []
