"""Mapping reload on a running gateway (real processes, simulator, broker, hub): a bad mapping
changes nothing; a good one changes behaviour with no gap in the sequence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.demo import outcome, settle
from devstack.stack import SOURCE, Stack
from simulators import scenario as sc

pytestmark = pytest.mark.slow


def _api(stack: Stack, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metric(stack: Stack, name: str, **labels: str) -> float:
    """One sample of the gateway's Prometheus metrics (GET /metrics)."""
    url = f"http://127.0.0.1:{stack.api_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in the gateway's metrics:\n{text}")


async def _wait_digest_change(stack: Stack, old: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, info = await asyncio.to_thread(_api, stack, "/api/mapping")
        if info["digest"] != old:
            return str(info["digest"])
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not reload its mapping")


def test_bad_reload_changes_nothing_and_good_reload_changes_behaviour(tmp_path: Path) -> None:
    async def main() -> tuple[Any, list[int]]:
        stack = Stack(tmp_path)
        try:
            await stack.start()
            await stack.wait_polled()
            first = await sc.run(stack.device, sc.Scenario(orders=(sc.WorkOrder(1001, 12),),
                                                           seed=11))
            expected = first.expected(operation="OP10", progress_every=5)
            await settle(stack, len(expected), "acme", 60)

            # The metrics follow the running gateway.
            source = SOURCE
            emitted = await asyncio.to_thread(_metric, stack, "keyop_gateway_packets_emitted_total",
                                              source=source)
            assert emitted == len(expected)
            assert await asyncio.to_thread(_metric, stack, "keyop_uplink_connected",
                                           source=source) == 1
            assert await asyncio.to_thread(_metric, stack, "keyop_outbox_last_seq",
                                           source=source) == len(expected)
            assert await asyncio.to_thread(_metric, stack, "keyop_driver_requests_total",
                                           device="press-1", protocol="modbus") > 0

            status, before = await asyncio.to_thread(_api, stack, "/api/mapping")
            assert status == 200 and before["stations"] == ["press-1"]
            mapping = stack.workdir / "mapping.yaml"
            good_text = mapping.read_text()
            mapping.write_text(good_text.replace("press.busy", "press.bsy", 1))
            status, result = await asyncio.to_thread(_api, stack, "/api/mapping/reload", "POST")
            assert status == 422 and not result["ok"]
            assert any("mapping.yaml:" in p and "press.busy" in p for p in result["problems"])
            _, after_bad = await asyncio.to_thread(_api, stack, "/api/mapping")
            assert after_bad["digest"] == before["digest"]

            mapping.write_text(good_text.replace("every: 5", "every: 2"))
            assert stack.gateway is not None
            os.kill(stack.gateway.pid, signal.SIGHUP)
            await _wait_digest_change(stack, before["digest"])

            second = await sc.run(stack.device, sc.Scenario(orders=(sc.WorkOrder(1002, 8),),
                                                            seed=12))
            expected += second.expected(operation="OP10", progress_every=2)
            await settle(stack, len(expected), "acme", 60)
            stack.stop_gateway()
            stack.stop_hub()
            assert stack.observer is not None
            sequences = sorted({int(d.event["sequence"]) for d in stack.observer.snapshot()
                                if d.supplier == "acme"})
            return outcome(stack, expected), sequences
        finally:
            await stack.close()

    result, sequences = asyncio.run(main())
    summary = result.summary()
    assert summary["lost"] == 0 and summary["unexpected"] == 0, summary
    assert summary["duplicates"] == 0, summary
    assert sequences == list(range(1, len(sequences) + 1)), "no gap in the sequence"
    assert summary["emitted"] == summary["stored_at_hub"] == summary["expected"], summary
