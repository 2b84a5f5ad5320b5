"""`keyop bench board` through the command itself, tiny: a small board, one short phase, in
headless Chromium. The figures are the benchmark's business; a correct run draws every
event and requests nothing off loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack import browser

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(browser.available() is not None and not os.environ.get("CI"),
                                 reason=str(browser.available()))]


def test_the_board_bench_measures_render_and_live_rate() -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "--log-level", "WARNING", "bench",
                           "board", "--orders", "20", "--operations", "3", "--rates", "20",
                           "--seconds", "2"], capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows_rendered"] == 20
    assert 0 < result["first_render_ms"] < 10_000
    (phase,) = result["phases"]
    assert phase["events"] >= 30 and phase["missing"] == 0, phase
    assert phase["lag_p99_ms"] is not None
    assert result["requests_off_loopback"] == 0
