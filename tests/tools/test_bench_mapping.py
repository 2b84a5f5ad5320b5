"""A tiny run of `keyop bench mapping`, so the benchmark keeps working."""

from __future__ import annotations

from bench.mapping import run_bench_mapping


def test_bench_mapping_reports_its_figures() -> None:
    result = run_bench_mapping(stations=3, samples=3_000, polls_per_part=1)
    assert result["samples"] == 3_000 and result["stations"] == 3
    assert result["packets"] > 50  # parts made on every poll: progress and scrap packets
    assert result["samples_per_s"] > 0 and result["us_per_sample_p99"] > 0
