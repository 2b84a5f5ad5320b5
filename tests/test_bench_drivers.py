"""`keyop bench modbus-poll --consumer batch` measures the same polling as the default."""

from __future__ import annotations

import asyncio

from gateway.bench_drivers import bench_modbus_poll


def test_the_batch_consumer_gets_every_sample_with_the_same_requests() -> None:
    poll = asyncio.run(bench_modbus_poll(devices=2, registers=130, interval_s=0.1,
                                         duration_s=0.5, consumer="batch"))
    assert poll["consumer"] == "batch"
    assert poll["requests_per_cycle"] == poll["coalesced_minimum"] == 4
    assert poll["read_errors"] == 0
    # 2 devices x 130 registers every 0.1 s; the window may cut a cycle at either end.
    assert poll["samples_per_s"] >= 0.8 * poll["expected_samples_per_s"]
