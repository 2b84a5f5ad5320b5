"""`keyop bench board` runs end to end in headless Chromium and reports its figures (a small
board, one short phase: the figures themselves are the benchmark's business)."""

from __future__ import annotations

import os

import pytest

from bench.board import run_bench_board
from devstack import browser

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(browser.available() is not None and not os.environ.get("CI"),
                                 reason=str(browser.available()))]


def test_the_board_bench_measures_render_and_live_rate() -> None:
    result = run_bench_board(orders=20, operations=3, rates=(20,), seconds=2.0)
    assert result["rows_rendered"] == 20
    assert 0 < result["first_render_ms"] < 10_000
    (phase,) = result["phases"]
    assert phase["events"] >= 30 and phase["missing"] == 0, phase
    assert phase["lag_p99_ms"] is not None
    assert result["requests_off_loopback"] == 0
