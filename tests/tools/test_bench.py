"""Tiny runs of `keyop bench ...` through the command itself, so every benchmark keeps working
and keeps its own checks; each prints one JSON line last. The figures are not tested, only what
a correct run must show (every sample, every bad frame rejected, nothing dropped)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest


def bench(*args: str) -> dict[str, Any]:
    """`keyop bench <args>`: the run must pass its own check; its JSON line."""
    result = subprocess.run([sys.executable, "-m", "cli", "--log-level", "WARNING", "bench",
                             *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("consumer", ["batch", "sample"])
def test_every_sample_arrives_with_the_minimal_requests(consumer: str) -> None:
    poll = bench("modbus-poll", "--devices", "2", "--registers", "130", "--interval", "100ms",
                 "--duration", "0.5", "--consumer", consumer)
    assert poll["consumer"] == consumer
    assert poll["requests_per_cycle"] == poll["coalesced_minimum"] == 4
    assert poll["read_errors"] == 0
    # 2 devices x 130 registers every 0.1 s; the window may cut a cycle at either end.
    assert poll["samples_per_s"] >= 0.8 * poll["expected_samples_per_s"]


def test_tiny_benchmarks_run() -> None:
    rec = bench("reconnect", "--down", "0.2", "--rounds", "1")
    assert rec["modbus"]["recovery_s_max"] < 5 and rec["opcua"]["recovery_s_max"] < 10
    sub = bench("opcua-subscribe", "--items", "20", "--sampling", "100ms", "--duration", "0.5")
    assert sub["notifications_per_s"] > 0 and sub["bare_notifications_per_s"] > 0
    assert sub["dropped"] == 0


def test_bench_serial_counts_every_injected_bad_frame() -> None:
    result = bench("serial", "--frames", "2000")
    assert result["rejected"] == result["injected_bad"] > 0
    assert result["delivered"] == result["frames"] - result["injected_bad"]


def test_bench_mapping_reports_its_figures() -> None:
    result = bench("mapping", "--stations", "3", "--samples", "3000", "--polls-per-part", "1")
    assert result["samples"] == 3_000 and result["stations"] == 3
    assert result["packets"] > 50  # parts made on every poll: progress and scrap packets
    assert result["samples_per_s"] > 0 and result["us_per_sample_p99"] > 0
