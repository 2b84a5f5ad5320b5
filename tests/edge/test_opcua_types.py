"""An OPC UA signal's declared `type` against the server's DataType: a mismatch is a named
bad sample, once per connect; matching nodes deliver as usual. Real server (simulators)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import Quality, Sample
from drivers.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaSignal
from simulators.opcua_plc import OpcUaPlc

pytestmark = pytest.mark.timeout(40)


def test_a_node_of_another_datatype_is_a_named_bad_sample() -> None:
    async def body() -> list[Sample]:
        plc = OpcUaPlc(seed=3)
        await plc.start()
        signals = (
            OpcUaSignal("w.busy", plc.node_id("W1", "Busy"), 0.05, expected="bool"),
            OpcUaSignal("w.good", plc.node_id("W1", "PartCount"), 0.05, expected="uint32"),
            OpcUaSignal("w.current", plc.node_id("W1", "Current"), 0.05, expected="int32"),
            OpcUaSignal("w.order", plc.node_id("W1", "Order"), 0.05),  # not declared
        )
        driver = OpcUaDriver(OpcUaDeviceConfig("plc-1", plc.endpoint, signals, timeout_s=1.0,
                                               keepalive_s=0.3))
        seen: list[Sample] = []

        async def consume() -> None:
            async for sample in driver.samples():
                seen.append(sample)
                got = {s.signal for s in seen if s.quality is Quality.GOOD}
                if {"w.busy", "w.good", "w.order"} <= got and any(
                        s.signal == "w.current" for s in seen):
                    return

        try:
            await asyncio.wait_for(consume(), 20)
        finally:
            await driver.close()
            await plc.close()
        return seen

    seen = asyncio.run(body())
    current = [s for s in seen if s.signal == "w.current"]
    assert [s.quality for s in current] == [Quality.BAD]
    assert current[0].reason is not None and current[0].reason.startswith(
        "type_mismatch: signal 'w.current': node ")
    assert current[0].reason.endswith("the server's DataType is Double, the mapping expects int32")
