"""`keyop bench modbus-poll`: either consumer gets every sample with the minimal requests."""

from __future__ import annotations

import asyncio

import pytest

from bench.drivers import bench_modbus_poll


@pytest.mark.parametrize("consumer", ["batch", "sample"])
def test_every_sample_arrives_with_the_minimal_requests(consumer: str) -> None:
    poll = asyncio.run(bench_modbus_poll(devices=2, registers=130, interval_s=0.1,
                                         duration_s=0.5, consumer=consumer))
    assert poll["consumer"] == consumer
    assert poll["requests_per_cycle"] == poll["coalesced_minimum"] == 4
    assert poll["read_errors"] == 0
    # 2 devices x 130 registers every 0.1 s; the window may cut a cycle at either end.
    assert poll["samples_per_s"] >= 0.8 * poll["expected_samples_per_s"]
