"""The example OPC UA mapping, end to end without the network side: the simulated PLC runs a
scenario, the driver built from `config/mapping-opcua.yaml` subscribes, the mapping
engine turns the samples into packets, and those are exactly the scenario's ground truth.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgekit import arun

from drivers.base import Sample
from drivers.opcua import OpcUaDriver
from gateway.devices import build_drivers
from mapping.engine import Engine
from mapping.load import load_mapping
from simulators.opcua_plc import OpcUaPlc
from simulators.scenario import (
    COMPLETED,
    PROGRESS,
    SCRAPPED,
    STARTED,
    Expected,
    Scenario,
    WorkOrder,
    run,
)

ROOT = Path(__file__).resolve().parents[2]
OPERATION_TYPES = {STARTED, PROGRESS, SCRAPPED, COMPLETED}


def test_example_mapping_over_the_plc_gives_the_ground_truth(tmp_path: Path) -> None:
    async def body() -> tuple[list[Expected], list[Expected]]:
        plc = OpcUaPlc(seed=2)
        await plc.start()
        text = (ROOT / "config" / "mapping-opcua.yaml").read_text()
        mapping = tmp_path / "mapping.yaml"
        mapping.write_text(text.replace("opc.tcp://127.0.0.1:4840/keyop/plc", plc.endpoint))
        doc, compiled = load_mapping(mapping)
        (driver,) = build_drivers(doc, compiled)
        assert isinstance(driver, OpcUaDriver)
        engine = Engine(compiled)
        samples: list[Sample] = []
        ready = {"weld.busy", "weld.good", "weld.scrap", "weld.order", "weld.planned"}

        async def consume() -> None:
            async for sample in driver.samples():
                samples.append(sample)
                if ready <= {s.signal for s in samples}:
                    started.set()

        started = asyncio.Event()
        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(started.wait(), 10)
            scenario = Scenario(orders=(WorkOrder(501, 7), WorkOrder(502, 5)), cycle_s=0.15,
                                cycle_jitter_s=0.02, changeover_s=0.4, scrap_rate=0.2, seed=5)
            truth = await run(plc.stations["W1"], scenario)
            station = plc.stations["W1"]

            def settled() -> bool:
                last = {s.signal: s.value for s in samples if s.good}
                return (last.get("weld.good") == station.good
                        and last.get("weld.scrap") == station.scrap
                        and last.get("weld.busy") is False)

            for _ in range(100):
                if settled():
                    break
                await asyncio.sleep(0.05)  # bounded: 5 s at most for the last publish
        finally:
            await driver.close()
            await asyncio.gather(task, return_exceptions=True)
            await plc.close()
        emitted = []
        for sample in samples:
            for draft in engine.step(sample):
                if draft.type in OPERATION_TYPES:
                    data = draft.data
                    emitted.append(Expected(draft.type, data["workOrder"]["id"],
                                            data["operation"]["id"],
                                            data["quantities"]["good"],
                                            data["quantities"]["scrap"],
                                            data["quantities"].get("planned", 0)))
        return emitted, truth.expected(operation="OP20", progress_every=5)

    emitted, expected = arun(body, timeout=40)
    assert any(e.type == SCRAPPED for e in expected), "the seed should give some scrap"
    assert emitted == expected
